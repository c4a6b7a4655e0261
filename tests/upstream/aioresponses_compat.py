"""aioresponses on aiohttp 3.14: a small test-side shim instead of pinning aiohttp.

Why: aioresponses 0.7.9 (the newest release) builds its fake responses by calling
``ClientResponse(method, url, writer=..., continue100=..., timer=..., request_info=...,
traces=..., loop=..., session=...)``. aiohttp 3.14 added a required keyword-only
``stream_writer`` argument, so every mocked request fails with
``TypeError: ClientResponse.__init__() missing 1 required keyword-only argument:
'stream_writer'`` (aioresponses issue #289, still open). aioresponses works with
aiohttp 3.13.5, but aiohttp 3.14 carries security fixes, so the runtime is not pinned
back (docs/architecture.md §9); the test side adapts instead.

How: aioresponses accepts a ``response_class``. ``CompatResponse`` is a
``ClientResponse`` whose ``__init__`` supplies a stand-in stream writer when none is
given. With ``writer=None`` (what aioresponses passes: "request already sent")
aiohttp only reads ``stream_writer.output_size`` once, so an object with
``output_size = 0`` is all it needs. ``compat_aioresponses`` is ``aioresponses`` with
``response_class=CompatResponse`` as the default for every registered URL, including
responses returned by callbacks, so tests call ``mock.post(url, ...)`` as usual.

Remove this module (and use ``aioresponses`` directly) once an aioresponses release
passes ``stream_writer`` itself.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from aiohttp import ClientResponse
from aioresponses import CallbackResult, aioresponses

__all__ = ["CompatResponse", "compat_aioresponses"]


class _SentRequestWriter:
    """Stands in for aiohttp's StreamWriter of a request that was already sent (nothing was)."""

    output_size = 0


class CompatResponse(ClientResponse):
    """A ClientResponse that aioresponses can construct on aiohttp 3.14 (see the module docstring)."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentRequestWriter())
        super().__init__(method, url, **kwargs)


def _with_compat_result(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Make a callback's CallbackResult use CompatResponse unless it chose a class itself."""

    def fix(result: Any) -> Any:
        if isinstance(result, CallbackResult) and result.response_class is None:
            result.response_class = CompatResponse
        return result

    if inspect.iscoroutinefunction(callback):
        @functools.wraps(callback)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return fix(await callback(*args, **kwargs))

        return async_wrapper

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fix(callback(*args, **kwargs))

    return wrapper


class compat_aioresponses(aioresponses):
    """``aioresponses`` whose mocked responses are ``CompatResponse`` by default."""

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        if kwargs.get("response_class") is None:
            kwargs["response_class"] = CompatResponse
        if kwargs.get("callback") is not None:
            kwargs["callback"] = _with_compat_result(kwargs["callback"])
        super().add(url, method, *args, **kwargs)
