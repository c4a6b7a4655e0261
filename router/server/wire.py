"""HTTP/1.1 bytes for the fast front: recognise the one request shape it serves, and write answers.

`parse_head` is a recogniser, not a general parser: it accepts only a plain
`POST /v1/chat/completions HTTP/1.1` head with a Host, a Content-Length body, at most 128
printable ASCII header lines and no header that changes the framing, the body or the
connection (Transfer-Encoding, Content-Encoding, Expect, Upgrade, Proxy-Connection), and
returns None for everything else. None means aiohttp's own server, with
its C parser and limits, gets the connection; so each request is read by exactly one parser,
and this one only says yes to heads on which it cannot disagree with aiohttp.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus

from router.server.errors import error_body

REQUEST_LINE = b"POST /v1/chat/completions HTTP/1.1"
MAX_HEAD_BYTES = 8190  # aiohttp's own line and field limit; a longer head is aiohttp's to refuse
MAX_FIELDS = 128  # aiohttp's limit on header fields
# A field name is an RFC 9110 token; a value is printable ASCII, inner spaces and tabs allowed. The
# whole head is checked by one match (a loop over lines cost ~10 µs a request, 4x that with cold caches),
# then the fields are read from the checked text.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = r"(?:[!-~](?:[ \t!-~]*[!-~])?)?"
_HEAD = re.compile(rf"{re.escape(REQUEST_LINE.decode())}(?:\r\n{_TOKEN}:[ \t]*{_VALUE}[ \t]*)*")
_FIELDS = re.compile(rf"\r\n({_TOKEN}):[ \t]*({_VALUE})")
# Proxy-Connection: aiohttp's parser (llhttp) honours `Proxy-Connection: close` as `Connection`
# would be; no client of ours sends it, so such a request is aiohttp's.
_REFUSED_FIELDS = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade", "proxy-connection"})
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class Headers(dict[str, str]):
    """Request headers keyed by lower-case name: looked up case-insensitively, as aiohttp's are."""

    __slots__ = ()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class RequestHead:
    __slots__ = ("close", "headers", "length")

    def __init__(self, headers: Headers, length: int, close: bool) -> None:
        self.headers, self.length, self.close = headers, length, close


def parse_head(head: bytes) -> RequestHead | None:
    """The head (without its blank line) if the fast front serves this request, else None. The body's
    length is not checked against a limit here: the front answers an oversized one at once."""
    text = head.decode("latin-1")  # every byte maps to one character; _HEAD then admits ASCII only
    if _HEAD.fullmatch(text) is None:  # obs-fold, a bare CR or LF, a control or non-ASCII byte, no colon...
        return None
    fields = _FIELDS.findall(text)
    if len(fields) > MAX_FIELDS:
        return None  # aiohttp refuses it (400)
    headers = Headers({name.lower(): value for name, value in fields})
    if len(headers) != len(fields) or not _REFUSED_FIELDS.isdisjoint(headers):
        return None  # a repeated field is aiohttp's to judge
    if "host" not in headers:
        return None  # HTTP/1.1 requires it: aiohttp answers 400
    length = dict.get(headers, "content-length")
    if length is None or not length.isdigit() or len(length) > 12:
        return None  # no body (an error anyway), or not a plain length: aiohttp answers either
    connection = dict.get(headers, "connection")
    if connection is None:
        return RequestHead(headers, int(length), False)
    tokens = {token.strip().lower() for token in connection.split(",")}
    if "upgrade" in tokens:
        return None
    return RequestHead(headers, int(length), "close" in tokens)


_date: list[object] = [0, b""]


def date_line() -> bytes:
    """The Date header, formatted once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date[1]  # type: ignore[return-value]


def answer_head(status: int, headers: object, *, length: int | None, close: bool) -> bytes:
    """Status line and header block. `length=None` means a chunked body. `headers` is a mapping or
    a multidict; a value with a CR or LF (header injection) raises ValueError."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    count = 0
    for name, value in headers.items():  # type: ignore[attr-defined]
        lines.append(f"{name}: {value}\r\n".encode())
        count += 1
    lines.append(b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length)
    lines.append(date_line())
    if close:
        lines.append(b"Connection: close\r\n")
        count += 1
    lines.append(b"\r\n")
    head = b"".join(lines)
    if head.count(b"\n") != count + 4 or head.count(b"\r") != count + 4:
        raise ValueError("a header value holds a line break")
    return head


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def refusal(status: int, message: str, *, code: str, retry_after: int | None = None) -> bytes:
    """A whole answer that ends the connection, in the OpenAI error shape, for what is refused before a
    request was read (a head too slow or too large, one connection too many)."""
    body = error_body(message, status=status, code=code)
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return answer_head(status, headers, length=len(body), close=True) + body
