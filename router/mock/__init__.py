"""A fake OpenAI-compatible chat-completions provider for tests, demos and `router mock`.

    async with FakeProvider("aimo") as provider:
        provider.script(Status.rate_limited("1"), Stream(cut_after=2))
        ...  # point the router at provider.base_url
        assert provider.count == 3

It speaks the wire format of the seed providers (AIMO's OpenAI-shaped JSON and
SSE, ASI1's extra top-level fields) and records every attempt as a `Hit`.
"""

from .faults import (
    Continue,
    Fault,
    Hang,
    Ok,
    RandomFaults,
    RejectPrefill,
    RequestView,
    Reset,
    SlowFirstByte,
    Status,
    Stream,
    resolve,
)
from .server import FakeProvider, Hit

__all__ = [
    "Continue",
    "FakeProvider",
    "Fault",
    "Hang",
    "Hit",
    "Ok",
    "RandomFaults",
    "RejectPrefill",
    "RequestView",
    "Reset",
    "SlowFirstByte",
    "Status",
    "Stream",
    "resolve",
]
