"""The one value the chat logic answers with, whichever front received the request.

`chat.serve_chat` decides an `Answer`; the fast front (front.py) and the aiohttp handler
(handlers.py) each render it to bytes their own way. The outcome, the attempt count and
the provider come from the request's record, so the answer's headers, the access line and
the metrics read one source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.engine.outcome import RequestRecord
from router.engine.streaming import ChatStream
from router.errors import InvalidRequest, NoTargetAvailable, RateLimited, RouterError
from router.server.errors import error_body

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(slots=True)
class Answer:
    """Status and headers, then a body or an event stream (already past its commit point)."""

    status: int
    headers: dict[str, str]
    record: RequestRecord
    body: bytes = b""
    stream: ChatStream | None = None
    close: bool = False  # close the connection after this answer (the request body was not read whole)

    @property
    def outcome(self) -> str | None:
        return self.record.outcome

    @property
    def attempts(self) -> int:
        return self.record.attempts

    @property
    def provider(self) -> str | None:
        return self.record.provider


def router_headers(record: RequestRecord, request_id: str) -> dict[str, str]:
    """The headers every chat answer carries."""
    return {"x-request-id": request_id, "x-router-attempts": str(record.attempts),
            "x-router-provider": record.provider or "none"}


def error_answer(record: RequestRecord, request_id: str, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, error_type: str | None = None, retry_after: float | None = None,
                 close: bool = False) -> Answer:
    headers = router_headers(record, request_id)
    headers["Content-Type"] = "application/json"
    if retry_after is not None:
        # Retry-After is whole seconds; round up so a client never comes back too early.
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return Answer(status, headers, record, error_body(message, status=status, code=code, param=param,
                                                      error_type=error_type), close=close)


def router_error_answer(record: RequestRecord, request_id: str, exc: RouterError) -> Answer:
    """A typed engine error as its HTTP answer (the status lives on the exception)."""
    retry_after: float | None = None
    if isinstance(exc, RateLimited):
        retry_after = exc.retry_after
    elif isinstance(exc, NoTargetAvailable):
        retry_after = exc.retry_after if exc.retry_after is not None else 1.0
    status = exc.status if 400 <= exc.status <= 599 else 500
    return error_answer(record, request_id, status, exc.message, code=exc.code,
                        param=exc.param if isinstance(exc, InvalidRequest) else None, error_type=exc.error_type,
                        retry_after=retry_after)
