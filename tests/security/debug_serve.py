"""The `router` CLI with every logger at DEBUG, aiohttp's and asyncio's included.

`router serve --log-level debug` sets the root logger to DEBUG but quietens
`aiohttp.server` (it logs client hiccups with tracebacks). The secret-hygiene
tests want to see everything any library would log, so this entry point undoes
that after the daemon's own logging set-up:

    python -m tests.security.debug_serve serve -c policy.yaml --log-level debug
"""

from __future__ import annotations

import logging
import sys

from router import cli
from router.server import main as server_main
from tests.security.canaries import LIBRARY_LOGGERS

_daemon_setup = server_main.setup_logging


def setup_logging(level: str) -> None:
    _daemon_setup(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)


server_main.setup_logging = setup_logging

if __name__ == "__main__":
    raise SystemExit(cli.main(sys.argv[1:]))
