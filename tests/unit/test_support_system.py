"""A test that needs a system program it cannot find fails, naming the install step; it never skips."""

from __future__ import annotations

import pytest

from tests.support.system import require


def test_a_missing_program_fails_the_test_with_the_install_step() -> None:
    with pytest.raises(pytest.fail.Exception) as info:
        require("no-such-program-for-the-router-tests", "some-debian-package")
    message = str(info.value)
    assert "`no-such-program-for-the-router-tests` is not installed" in message
    assert "tests/run.sh" in message and "apt-get install some-debian-package" in message


def test_a_present_program_is_found_on_the_path() -> None:
    assert require("sh", "dash").endswith("/sh")
