"""Every error the daemon sends, in the OpenAI shape: {"error": {message, type, param, code}}.

The message is the router's own summary (or the provider's message for a 4xx
about the request itself); never a stack trace, never a key.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Protocol

from aiohttp import web

from router.errors import InvalidRequest, NoTargetAvailable, RateLimited, RouterError, UpstreamError

log = logging.getLogger("router.server")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    417: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class RequestLine(Protocol):
    """What an error answer may say about the request: an aiohttp request, or a fast-front exchange."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...


def error_body(message: str, *, status: int, code: str | None = None, param: str | None = None,
               error_type: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": error_type or _STATUS_TYPES.get(status, "error"),
                                 "param": param, "code": code}}).encode()


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   error_type: str | None = None, retry_after: float | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    out = dict(headers or {})
    if retry_after is not None:
        # Retry-After is whole seconds; round up so a client never comes back too early.
        out["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return web.Response(status=status, content_type="application/json", headers=out,
                        body=error_body(message, status=status, code=code, param=param, error_type=error_type))


def router_error_response(exc: RouterError, headers: dict[str, str] | None = None) -> web.Response:
    """Map a typed engine error to its HTTP answer (the status lives on the exception)."""
    retry_after: float | None = None
    param: str | None = None
    if isinstance(exc, RateLimited):
        retry_after = exc.retry_after
    elif isinstance(exc, NoTargetAvailable):
        retry_after = exc.retry_after if exc.retry_after is not None else 1.0
    elif isinstance(exc, UpstreamError) and exc.status in (502, 503, 504):
        retry_after = None
    if isinstance(exc, InvalidRequest):
        param = exc.param
    status = exc.status if 400 <= exc.status <= 599 else 500
    return error_response(status, exc.message, code=exc.code, param=param, error_type=exc.error_type,
                          retry_after=retry_after, headers=headers)


def http_error_response(request: RequestLine, exc: web.HTTPException) -> web.Response:
    """aiohttp's own HTTP errors (404, 405, 413, ...) in the OpenAI shape instead of its HTML/text."""
    message = {404: f"unknown path {request.path}",
               405: f"method {request.method} not allowed on {request.path}"}.get(exc.status, exc.reason)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error_response(exc.status, message, headers=headers)


def internal_error_response(request: RequestLine, exc: Exception) -> web.Response:
    # Log the type and message only: a traceback could carry request data into the logs.
    log.error("internal error serving %s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
    return error_response(500, "internal error in the router", code="internal_error")
