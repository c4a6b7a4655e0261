"""`router serve`, plus one thing: on SIGUSR2 it writes its asyncio task count to a file.

    python -m tests.support.daemon_probe --tasks-file /tmp/tasks.json -c POLICY --port PORT

The leak check needs the daemon's task count from outside the process. This runs the
very same `run_daemon` as `router serve` (same logging, same signals, same drain); the
only addition is a signal handler, so no task is added to what is being counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

from router.errors import PolicyError
from router.policy import load_policy
from router.server.main import log, run_daemon, setup_logging


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tasks-file", required=True, type=Path)
    args = parser.parse_args()
    setup_logging("info")
    try:
        policy = load_policy(args.config)
    except PolicyError as exc:
        log.error("cannot start: %s", exc)
        return 2

    def report() -> None:
        staging = args.tasks_file.with_suffix(".new")
        staging.write_text(json.dumps({"tasks": len(asyncio.all_tasks()), "t": time.monotonic()}))
        staging.replace(args.tasks_file)

    async def serve() -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, report)
        return await run_daemon(policy, args.config, args.host, args.port)

    return asyncio.run(serve())


if __name__ == "__main__":
    raise SystemExit(main())
