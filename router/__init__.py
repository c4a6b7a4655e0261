"""A resilient request router for OpenAI-compatible LLM APIs.

Embed it (`Router`), run it as a daemon (`router serve`), watch it from Prometheus.
"""

from router._version import __version__
from router.engine.completion import ChatResult
from router.engine.streaming import ChatStream
from router.errors import (
    InvalidRequest,
    NoTargetAvailable,
    PolicyError,
    RateLimited,
    RouteNotAllowed,
    RouterError,
    StreamInterrupted,
    UnknownRoute,
    UpstreamError,
)
from router.policy import Policy, load_policy
from router.router import Router
from router.upstream.sse import SseEvent, SseRun

__all__ = [
    "ChatResult",
    "ChatStream",
    "InvalidRequest",
    "NoTargetAvailable",
    "Policy",
    "PolicyError",
    "RateLimited",
    "RouteNotAllowed",
    "Router",
    "RouterError",
    "SseEvent",
    "SseRun",
    "StreamInterrupted",
    "UnknownRoute",
    "UpstreamError",
    "__version__",
    "load_policy",
]
