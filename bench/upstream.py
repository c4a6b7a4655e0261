"""A fast fake upstream for benchmarks: a fixed chat completion, or an SSE stream paced at --pace seconds.

Deliberately minimal (no recording, no parsing beyond the `stream` flag) so the
upstream costs as little as possible and the comparison measures the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

from aiohttp import web

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1718822400, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Quantum computing leverages..."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 15, "completion_tokens": 72, "total_tokens": 87},
}).encode()
_MAX_TOKENS = re.compile(rb'"max_tokens":\s*(\d+)')


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    payload = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1718822400,
               "model": "bench-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def make_app(pace_s: float, chunks: int) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream": true' not in body and b'"stream":true' not in body:
            return web.Response(body=COMPLETION, content_type="application/json")
        # A stream has --chunks content chunks, or `max_tokens` if fewer (short streams time the first event).
        limit = _MAX_TOKENS.search(body)
        count = min(chunks, int(limit.group(1))) if limit else chunks
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for index in range(count):
            await response.write(chunk(f"word{index} "))
            await asyncio.sleep(pace_s)
        await response.write(chunk(None, "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9301)
    parser.add_argument("--pace", type=float, default=0.05)
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args()
    web.run_app(make_app(args.pace, args.chunks), host="127.0.0.1", port=args.port, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
