"""JSON decoding for the router's own reads: orjson, with the standard library as the fallback.

orjson is about four times faster here (bench VM: a chat request body 3.4 -> 0.6 µs, a
stream event 4.1 -> 1.1 µs, a 20 KB conversation 25 -> 11 µs), and a request decodes two
to a dozen such documents. Input it refuses but `json` accepts (NaN, Infinity, lone
surrogates) falls back to `json`, so nothing valid before is refused now.

Two differences remain: an integer beyond 64 bits decodes as a float, and nesting deeper
than `json` can go is accepted. So `loads` reads what providers send, for classification
and accounting only (token counts, error codes, finish reasons, stream deltas): bodies
are forwarded as bytes, and what a library caller is handed (`ChatResult.data`) and the
client's request (what a client may send must not depend on orjson) use `json`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Like `json.loads` for UTF-8 input; raises ValueError (or RecursionError) on invalid JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
