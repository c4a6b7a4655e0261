"""Fixtures for the deploy/ checks: Debian's `prometheus` package (promtool and the server),
installed by tests/run.sh."""

from __future__ import annotations

import pytest

from tests.support.system import require


@pytest.fixture(scope="session")
def promtool() -> str:
    return require("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    return require("prometheus", "prometheus")
