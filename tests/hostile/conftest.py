"""The daemon fixtures of tests/server, reused: `daemon` (in the test's loop, its answers and logs
checked for leaks), `cli_daemon` (the real command in a subprocess) and `http`."""

from tests.server.conftest import cli_daemon, daemon, http  # noqa: F401  (fixtures, reused)
