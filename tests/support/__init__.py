"""What the tests (and the benchmarks) share: the in-memory transport, the policy builders and the
daemon handles. `bench/` may import from here; nothing here imports `bench/`."""
