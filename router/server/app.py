"""The app factory: routes (each guarded: OpenAI-shaped errors, drain tracking), and the router's lifetime."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import HttpVersion11, web

from router.observe.prometheus import CollectorRegistry, PrometheusObserver
from router.router import Router
from router.server import handlers
from router.server.aiohttp_internals import write_interim
from router.server.auth import ClientKeys
from router.server.context import CONTEXT, ServerContext
from router.server.errors import error_response, http_error_response, internal_error_response

log = logging.getLogger("router.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Handler:
    """Run a handler as a drainable request whose crashes and HTTP errors answer in the OpenAI shape.

    A wrapper per route, not an aiohttp middleware: a middleware stack costs two extra coroutine
    layers on every request (measured: ~0.05 ms of the streaming time to first byte), and the chat
    handler, the hot path, does the same work inline (handlers.chat_completions)."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        in_flight = request.app[CONTEXT].in_flight
        task = asyncio.current_task()
        if task is not None:
            in_flight.add(task)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_error_response(request, exc)
        except Exception as exc:
            return internal_error_response(request, exc)
        finally:
            if task is not None:
                in_flight.discard(task)

    return run


def _method_not_allowed(allowed: str) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return error_response(405, f"method {request.method} not allowed on {request.path}",
                              headers={"Allow": allowed})

    return answer


async def _not_found(request: web.Request) -> web.StreamResponse:
    return error_response(404, f"unknown path {request.path}")


# Framing headers spelled with an underscore: meaningless to aiohttp, which frames the body by Content-Length,
# but read as the real header by proxies that map `_` to `-` (CGI-style), so a request carrying one is framed
# two ways: the classic request-smuggling gadget. Refused, and the connection closed with it, so a request
# pipelined behind it (the smuggled one) is never read.
_FRAMING_LOOKALIKES = ("Transfer_Encoding", "Content_Length")


@web.middleware
async def refuse_framing_lookalikes(request: web.Request, handler: Handler) -> web.StreamResponse:
    headers = request.headers
    for name in _FRAMING_LOOKALIKES:
        if name in headers:
            response = error_response(400, f"header {name} is refused: proxies may read it as "
                                      f"{name.replace('_', '-')}", code="ambiguous_framing")
            response.force_close()
            return response
    return await handler(request)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` is answered as aiohttp does. Any other expectation is refused with a
    417 in the OpenAI shape: aiohttp's own 417 is plain text and is sent before any middleware runs."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, "only `Expect: 100-continue` is supported", code="expectation_failed")
    length = request.content_length
    if length is not None and length > request.app[CONTEXT].router.policy.server.max_body_bytes:
        return None  # no 100 Continue for a body that will be refused: the handler answers 413 at once
    await write_interim(request, b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


def create_app(router: Router, *, registry: CollectorRegistry | None = None,
               observer: PrometheusObserver | None = None, own_router: bool = True) -> web.Application:
    """Build the daemon's app around an existing Router. With `own_router`, the app closes it.

    /metrics serves `observer` (default: the router's own observer when it is a
    PrometheusObserver, else a new one in `registry`, which then only sees what the daemon
    itself counts: build info, reloads)."""
    policy = router.policy
    # The fast front hands every request with such a header to aiohttp (wire.parse_head): refused in one place.
    app = web.Application(client_max_size=policy.server.max_body_bytes, middlewares=[refuse_framing_lookalikes])
    if observer is None:
        own = router.observer
        if isinstance(own, PrometheusObserver) and (registry is None or registry is own.registry):
            observer = own
        else:
            observer = PrometheusObserver(registry)
    elif registry is not None and registry is not observer.registry:
        raise ValueError("create_app: `registry` must be the observer's registry")
    context = ServerContext(router=router, keys=ClientKeys(policy), metrics=observer)
    app[CONTEXT] = context
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/chat/completions", handlers.chat_completions),  # guards itself (see `guarded`)
        ("GET", "/v1/models", guarded(handlers.models)),
        ("GET", "/healthz", guarded(handlers.healthz)),
        ("GET", "/readyz", guarded(handlers.readyz)),
        ("GET", "/metrics", guarded(handlers.metrics)),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler, expect_handler=expect_continue)
        # Any other method on the same path: a 405 in the OpenAI shape (same resource, matched in order).
        allowed = "GET,HEAD" if method == "GET" else method
        app.router.add_route("*", path, _method_not_allowed(allowed), expect_handler=expect_continue)
    # Last: every other path. (A request target that is not a path, `OPTIONS *` or `CONNECT host:port`,
    # matches no route and gets aiohttp's plain 404, as unparseable requests get its plain 400.)
    app.router.add_route("*", "/{tail:.*}", _not_found, expect_handler=expect_continue)

    if context.keys.open:
        log.warning("no clients configured: the daemon accepts requests without a key (dev mode)")

    async def router_lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        if own_router:
            await router.aclose()

    app.cleanup_ctx.append(router_lifetime)
    return app
