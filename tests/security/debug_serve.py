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

LOUD = ("aiohttp", "aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server", "aiohttp.web",
        "aiohttp.websocket", "asyncio", "router")
_daemon_setup = server_main.setup_logging


def setup_logging(level: str) -> None:
    _daemon_setup(level)
    for name in LOUD:
        logging.getLogger(name).setLevel(logging.DEBUG)


server_main.setup_logging = setup_logging

if __name__ == "__main__":
    raise SystemExit(cli.main(sys.argv[1:]))
