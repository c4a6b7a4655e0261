"""The typed exceptions a caller of the library can catch.

Each carries the HTTP status the daemon answers with, so the mapping from
failure to status lives in one place and the server stays thin.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base class of every error the router raises on purpose."""

    status: int = 500
    error_type: str = "router_error"
    code: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PolicyError(RouterError):
    """A policy file is invalid. The message names the file, the key path and the problem."""

    error_type = "policy_error"

    def __init__(self, message: str, *, source: str = "<memory>", path: str = "") -> None:
        where = f"{source}: {path}: " if path else f"{source}: "
        super().__init__(where + message)
        self.source = source
        self.path = path
        self.problem = message


class InvalidRequest(RouterError):
    """The request itself is wrong (bad JSON, missing `messages`, ...)."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class UnknownRoute(InvalidRequest):
    """No route matches the requested model name."""

    status = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.",
                         param="model", code="model_not_found")
        self.model = model


class RouteNotAllowed(InvalidRequest):
    """The client is known but may not use this route."""

    status = 403
    error_type = "permission_error"

    def __init__(self, client: str, route: str) -> None:
        super().__init__(f"client `{client}` may not use route `{route}`", param="model",
                         code="route_not_allowed")


class RateLimited(RouterError):
    """Over a limit: the client's own, or every provider of the route is throttled."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, scope: str = "client") -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)
        self.scope = scope  # "client" or "providers"


class NoTargetAvailable(RouterError):
    """Nothing could be tried: every target was excluded, or the retry budget is spent."""

    status = 503
    error_type = "service_unavailable"
    code = "no_target_available"

    def __init__(self, message: str, *, attempts: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retry_after = retry_after


class UpstreamError(RouterError):
    """The providers were tried and none answered usefully.

    `status` is what the daemon returns: the provider's own 4xx when the request
    itself was refused (content policy), 502 for provider failures, 504 when the
    deadline or a timeout ended the request. `body` is the last provider body
    (bytes, possibly empty); `attempts` counts upstream attempts.
    """

    error_type = "upstream_error"

    def __init__(self, message: str, *, status: int, body: bytes = b"", attempts: int = 0,
                 provider: str | None = None, reason: str = "upstream_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.attempts = attempts
        self.provider = provider
        self.reason = reason
        self.code = code
        if 400 <= status < 500:
            self.error_type = "invalid_request_error"


class StreamInterrupted(UpstreamError):
    """A stream was cut after its first event reached the caller and could not be continued.

    The iterator has already yielded an SSE error event (`event`) before raising,
    so a relay can forward it verbatim; the caller never sees `[DONE]`.
    """

    def __init__(self, message: str, *, attempts: int, provider: str | None, reason: str,
                 event: bytes) -> None:
        super().__init__(message, status=502, attempts=attempts, provider=provider, reason=reason,
                         code="stream_interrupted")
        self.event = event
