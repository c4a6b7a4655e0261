"""Resilience proof: the daemon under load and faults, through real HTTP on 127.0.0.1.

The scenarios live in `tests/support/scenarios.py` (sized by their arguments); these tests run
them at CI size and assert the issue's thresholds. `bench/soak.py` runs them big.
"""
