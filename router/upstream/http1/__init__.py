"""A lean HTTP/1.1 client for the upstream hop: keep-alive pools over `asyncio.Protocol`, parsed by httptools.

Why not aiohttp's `ClientSession` (still available per provider as `http_client: aiohttp`):
on the benchmark VM it costs ~0.1 ms of CPU per request (URL joins, header multidicts,
tracing hooks, cookie jar, timers), half of what the router spends in total; this client
costs about a fifth of that (bench/README.md). It does only what the router needs: one
POST at a time per connection with a fully built head, answers framed by Content-Length,
chunked encoding or EOF, gzip/deflate bodies, keep-alive reuse with an idle expiry (also
after a stream the caller stopped reading at its `[DONE]`: see `Connection.finish`), and
read-side back-pressure, an HTTP proxy from the environment (a CONNECT tunnel for https). It
never follows redirects and keeps no cookies.

- connection.py: one connection and its states; response.py: one answer's body stream;
  pool.py: the connections to one origin; tunnel.py: the CONNECT tunnel through a proxy;
  decoding.py: gzip and deflate bodies, inflated in bounded pieces.
- Failures are the transport's own types (upstream/errors.py): `ConnectFailed`,
  `ConnectionLost` before the head, `BodyCut` in the body.
"""

from router.upstream.http1.connection import Connection, State
from router.upstream.http1.pool import Pool, request_head
from router.upstream.http1.response import Response

__all__ = ["Connection", "Pool", "Response", "State", "request_head"]
