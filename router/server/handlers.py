"""aiohttp handlers. Thin: the chat logic lives in chat.py, shared with the fast front."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import web

from router.server.aiohttp_internals import SseResponse
from router.server.answer import Answer
from router.server.chat import BodyRefused, events, serve_chat
from router.server.context import CONTEXT
from router.server.errors import error_response
from router.server.workers import LOCAL_ONLY, fleet_metrics

log = logging.getLogger("router.server")

# A client that trickles its body this slowly is holding a connection hostage.
BODY_READ_TIMEOUT_S = 30.0


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """The aiohttp route for what the fast front hands over (chunked or slow bodies, `Expect`, ...)."""
    exchange = _AiohttpExchange(request)
    await serve_chat(request.app[CONTEXT], exchange)
    assert exchange.response is not None
    return exchange.response


class _AiohttpExchange:
    __slots__ = ("method", "path", "request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.method = request.method
        self.path = request.path
        self.response: web.StreamResponse | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    @property
    def started(self) -> bool:
        return self.response is not None and self.response.prepared

    async def read_body(self) -> bytes:
        request = self.request
        limit = request.app[CONTEXT].router.policy.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            # Refused at once, as the fast front does: not after reading (or waiting for) the body.
            raise BodyRefused(413, f"request body is larger than {limit} bytes", code="body_too_large", closing=True)
        try:
            if request.content.is_eof():  # the whole body came with the headers: no wait, so no timer
                return await request.read()
            async with asyncio.timeout(BODY_READ_TIMEOUT_S):
                return await request.read()
        except TimeoutError:
            raise BodyRefused(408, "request body not received in time", outcome="body_timeout",
                              closing=True) from None
        except web.HTTPRequestEntityTooLarge:  # a chunked or compressed body that grew past the limit
            raise BodyRefused(413, f"request body is larger than {limit} bytes", code="body_too_large") from None
        except web.RequestPayloadError:
            # A body aiohttp cannot decode (Content-Encoding: gzip/deflate over non-compressed
            # bytes, a broken chunked body) is the client's error, not a 500.
            raise BodyRefused(400, "request body could not be read (bad encoding or framing)", code="invalid_body",
                              closing=True) from None

    async def send(self, answer: Answer) -> None:
        if answer.stream is None:
            response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
            if answer.close:
                response.force_close()
            self.response = response
            return
        stream = SseResponse(status=answer.status, headers=answer.headers)
        self.response = stream
        await stream.prepare(self.request)
        async for data, _ in events(answer):
            await stream.write(data)

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


async def models(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    client_name = context.keys.identify(request.headers)
    if client_name is None and not context.keys.open:
        return error_response(401, "missing or invalid API key", code="invalid_api_key")
    policy = context.router.policy
    client = policy.client_named(client_name) if client_name else None
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "llm-router"}
            for name in policy.routes if client is None or client.may_use(name)]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    if context.draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready", "policy": context.router.policy.source})


async def metrics(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    body, content_type = context.render_metrics()
    if context.worker is not None and request.query.get("scope") != LOCAL_ONLY:
        body = await fleet_metrics(context.worker, body)
    return web.Response(body=body, headers={"Content-Type": content_type})
