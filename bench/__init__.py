"""Benchmarks and soak harnesses. `loadgen` is router-independent; the tests import from here, never the reverse."""
