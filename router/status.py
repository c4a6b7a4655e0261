"""`router status`: the admin API's state as a terminal table, once or refreshed (`--watch`).

A client of `GET /admin/state` (server/admin.py) with the standard library only, so it runs wherever
the router is installed, against a local or a remote daemon.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:9091"
_COLOURS = {"red": "\033[31m", "amber": "\033[33m", "green": "\033[32m"}
_RESET = "\033[0m"


class StatusError(Exception):
    """The admin API could not be asked, or refused: the message says why, for the terminal."""


def fetch_state(url: str, key: str | None, timeout_s: float = 5.0) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise StatusError(f"--url must be an http:// or https:// URL, got {url!r}")
    request = urllib.request.Request(url.rstrip("/") + "/admin/state")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read(4 * 1024 * 1024))
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusError("the admin API needs its key: pass --key-env NAME (the variable holding it)") from None
        raise StatusError(f"the admin API answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach the admin API at {url}: {reason}") from None


def render(state: Mapping[str, Any], *, colour: bool = False) -> str:
    """The providers as a table: provider, state, in flight, p50/p99, errors/s, throttled until."""
    header = ("PROVIDER", "STATE", "IN FLIGHT", "TTFB P50/P99", "ERRORS/S", "THROTTLED UNTIL")
    rows = [header]
    statuses = []
    for name, provider in state.get("providers", {}).items():
        recent = provider.get("recent") or {}
        rows.append((
            name, _state_of(provider), str(provider.get("in_flight", 0)),
            f"{_ms(recent.get('ttfb_p50_s'))}/{_ms(recent.get('ttfb_p99_s'))}",
            f"{recent.get('errors_per_s', 0.0):.2f}" if recent else "-",
            _clock(provider.get("throttled_until")),
        ))
        statuses.append(provider.get("status", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        line = "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        status = statuses[index - 1] if index else ""
        if colour and status in _COLOURS:
            line = _COLOURS[status] + line + _RESET
        lines.append(line)
    policy = state.get("policy", {})
    lines.append("")
    lines.append(f"policy {policy.get('path')} (sha256 {str(policy.get('sha256', ''))[:12]}), "
                 f"loaded {policy.get('loaded_at')}")
    if policy.get("last_reload_error"):
        lines.append(f"last reload refused: {policy['last_reload_error']}")
    return "\n".join(lines)


def run(url: str, key_env: str | None, *, watch: bool, out: TextIO = sys.stdout, interval_s: float = 2.0) -> int:
    key = None
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            print(f"router status: environment variable {key_env} is not set", file=sys.stderr)
            return 2
    colour = out.isatty()
    while True:
        try:
            text = render(fetch_state(url, key), colour=colour)
        except StatusError as exc:
            print(f"router status: {exc}", file=sys.stderr)
            return 1
        if watch and colour:
            out.write("\033[H\033[2J")  # clear the screen, like `watch`
        out.write(text + "\n")
        out.flush()
        if not watch:
            return 0
        try:
            time.sleep(interval_s)
        except KeyboardInterrupt:
            return 0


def _state_of(provider: Mapping[str, Any]) -> str:
    if provider.get("drained"):
        return "drained"
    if provider.get("breaker") == "open":
        return "ejected"
    if provider.get("throttled_until"):
        return f"throttled ({provider.get('throttle_cause')})"
    if provider.get("breaker") == "half_open":
        return "half-open"
    return "serving"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def _clock(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
