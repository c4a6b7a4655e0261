"""System programs some tests need (Debian packages), found on PATH or reported as a failure.

tests/run.sh, the test command, installs them when they are missing; a test fixture never
installs anything. A test that needs one and cannot find it fails, naming the install step:
the feature it checks is not optional.
"""

from __future__ import annotations

import shutil

import pytest

INSTALL_HINT = "run tests/run.sh, which installs it, or `apt-get install {package}`"


def require(program: str, package: str) -> str:
    """The path of `program`, from Debian's `package`; the test fails when it is not installed."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"`{program}` is not installed: {INSTALL_HINT.format(package=package)}", pytrace=False)
    return path
