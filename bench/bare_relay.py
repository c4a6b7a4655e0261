"""The reference: a bare aiohttp relay (one server, one shared client session, forward body, return body).

It does nothing a gateway must do (no routing, retries, limits, streaming
semantics), so it is the floor the router's overhead is measured against.
A stream is forwarded read by read, as it comes. With `--uvloop` it runs on
uvloop's event loop: the fastest Python relay a user could write in an afternoon.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.post(upstream, data=body, headers={"Content-Type": "application/json"}) as up:
            if up.headers.get("Content-Type", "").startswith("text/event-stream"):
                response = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                async for data in up.content.iter_any():
                    await response.write(data)
                return response
            payload = await up.read()
            return web.Response(status=up.status, body=payload, content_type="application/json")

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9302)
    parser.add_argument("--upstream", default="http://127.0.0.1:9301/v1/chat/completions")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install uvloop)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
