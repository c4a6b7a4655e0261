"""One structured JSON line per request: who, what route, where it went, how it ended.

No keys, no prompts, no raw client strings other than the sanitised request id.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

access_logger = logging.getLogger("router.access")


@dataclass(slots=True)
class AccessRecord:
    request_id: str
    method: str
    path: str
    client: str = "-"
    route: str | None = None
    provider: str | None = None
    attempts: int = 0
    status: int = 0
    outcome: str = "unknown"
    stream: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def log_access(record: AccessRecord) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return
    line = {"ts": round(time.time(), 3), **asdict(record)}
    access_logger.info(json.dumps(line, separators=(",", ":")))
