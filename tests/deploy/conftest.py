"""Fixtures for the deploy/ checks: Debian's `prometheus` package (promtool and the server).

`.ci/run` installs it before the tests; these fixtures install it themselves when it is
missing and the tests run as root with apt-get (a developer machine), and skip with the
reason otherwise. The install runs at most once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

import pytest

APT_TIMEOUT_S = 600


@cache
def _install_debian_prometheus() -> str | None:
    """None when promtool and prometheus are there (installing them if possible); else why not."""
    if shutil.which("promtool") and shutil.which("prometheus"):
        return None
    if not shutil.which("apt-get"):
        return "Debian's prometheus package is not installed and apt-get is not available"
    if os.geteuid() != 0:
        return "Debian's prometheus package is not installed and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` did not finish within {APT_TIMEOUT_S}s"
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[-500:]}"
    if shutil.which("promtool") and shutil.which("prometheus"):
        return None
    return "apt-get installed prometheus, but promtool or prometheus is still not on PATH"


def _tool(name: str) -> str:
    problem = _install_debian_prometheus()
    if problem is not None:
        pytest.skip(f"{name} unavailable: {problem}")
    path = shutil.which(name)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    return _tool("prometheus")
