"""Failures the transport reports, free of any HTTP library's types.

Each client raises these for its own library's exceptions (http1 directly, the aiohttp
client by translating), so neither the transport nor the classifier (the only code that
interprets failures) imports an HTTP client.
"""

from __future__ import annotations


class TransportError(Exception):
    """Base: the attempt failed before a complete, parseable answer arrived."""

    def __init__(self, detail: str = "", *, deadline_bound: bool = False) -> None:
        super().__init__(detail or type(self).__name__)
        # True when the timeout that fired was the request's deadline, not the provider's own limit.
        self.deadline_bound = deadline_bound
        # True when the request went out twice: once on a kept-alive connection that died before any
        # byte of the answer (StaleConnection), then on a fresh one.
        self.resent = False


class ConnectFailed(TransportError):
    """No connection: refused, DNS failure, connect timeout, or the pool wait timed out."""

    def __init__(self, detail: str = "", *, deadline_bound: bool = False, timed_out: bool = False) -> None:
        super().__init__(detail, deadline_bound=deadline_bound)
        self.timed_out = timed_out  # the connect timeout fired (the transport knows if the deadline set it)


class ConnectionLost(TransportError):
    """The connection closed or reset before the response headers arrived."""


class StaleConnection(ConnectionLost):
    """A kept-alive connection died before any byte of the answer: the provider had closed it while it
    was idle. The client sends the request once more on a fresh connection, within the same attempt."""


class FirstByteTimeout(TransportError):
    """Connected, but no response headers within `first_byte_s`."""


class FirstTokenTimeout(TransportError):
    """A stream started but its first event came later than the route's `ttft_s`."""


class IdleTimeout(TransportError):
    """Nothing arrived for `idle_s` while reading a body or a stream (a stall)."""


class BodyCut(TransportError):
    """The body or stream ended abruptly: reset mid-body, or EOF inside an event."""


class InvalidResponse(TransportError):
    """A 2xx whose body is not the JSON or SSE it should be."""


class ResponseTooLarge(InvalidResponse):
    """The answer went over a limit: `max_response_bytes` (after decompression), or the header limits
    (a field over 8,190 bytes, more than 128 fields). It would likely do so again: fail over."""
