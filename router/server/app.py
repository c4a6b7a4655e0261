"""The app factory: routes, the error middleware, and the router's lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import HttpVersion11, web

from router.metrics import CollectorRegistry, PrometheusObserver
from router.router import Router
from router.server import handlers
from router.server.auth import ClientKeys
from router.server.errors import error_response
from router.server.state import STATE, ServerState

log = logging.getLogger("router.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTML errors (404, 405, 413...) and crashes into OpenAI error JSON, and
    register the request's task while it runs so a shutdown can drain it (main._drain).

    One middleware for both: each layer costs CPU on every request."""
    in_flight = request.app[STATE].in_flight
    task = asyncio.current_task()
    if task is not None:
        in_flight.add(task)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"unknown path {request.path}",
                   405: f"method {request.method} not allowed on {request.path}"}.get(exc.status, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, headers=headers)
    except Exception as exc:
        # Log the type and message only: a traceback could carry request data into the logs.
        log.error("internal error serving %s %s: %s: %s", request.method, request.path,
                  type(exc).__name__, exc)
        return error_response(500, "internal error in the router", code="internal_error")
    finally:
        if task is not None:
            in_flight.discard(task)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` is answered as aiohttp does. Any other expectation is refused with a
    417 in the OpenAI shape: aiohttp's own 417 is plain text and is sent before any middleware runs."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, "only `Expect: 100-continue` is supported", code="expectation_failed")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim answer is not part of the response's size
    return None


def create_app(router: Router, *, registry: CollectorRegistry | None = None,
               observer: PrometheusObserver | None = None, own_router: bool = True) -> web.Application:
    """Build the daemon's app around an existing Router. With `own_router`, the app closes it.

    /metrics serves `observer` (default: the router's own observer when it is a
    PrometheusObserver, else a new one in `registry`, which then only sees what the daemon
    itself counts: build info, reloads)."""
    policy = router.policy
    app = web.Application(client_max_size=policy.server.max_body_bytes, middlewares=[openai_errors])
    if observer is None:
        own = router.observer
        if isinstance(own, PrometheusObserver) and (registry is None or registry is own.registry):
            observer = own
        else:
            observer = PrometheusObserver(registry)
    elif registry is not None and registry is not observer.registry:
        raise ValueError("create_app: `registry` must be the observer's registry")
    state = ServerState(router=router, keys=ClientKeys(policy), metrics=observer)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", handlers.chat_completions, expect_handler=expect_continue)
    app.router.add_get("/v1/models", handlers.models, expect_handler=expect_continue)
    app.router.add_get("/healthz", handlers.healthz, expect_handler=expect_continue)
    app.router.add_get("/readyz", handlers.readyz, expect_handler=expect_continue)
    app.router.add_get("/metrics", handlers.metrics, expect_handler=expect_continue)

    if state.keys.open:
        log.warning("no clients configured: the daemon accepts requests without a key (dev mode)")

    async def router_lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        if own_router:
            await router.aclose()

    app.cleanup_ctx.append(router_lifetime)
    return app
