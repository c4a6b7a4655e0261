"""HTTP/1.1 bytes for the fast front: recognise the one request shape it serves, and write answers.

`parse_head` is a recogniser, not a general parser: it accepts only a plain
`POST /v1/chat/completions HTTP/1.1` head with a Host, a Content-Length body, at most 128
printable ASCII header lines and no header that changes the framing, the body or the
connection (Transfer-Encoding, Content-Encoding, Expect, Upgrade, Proxy-Connection, and the
smuggling gadgets Transfer_Encoding and Content_Length), and returns None for everything else.
None means aiohttp's own server, with its C parser and limits, gets the connection; so each
request is read by exactly one parser, and this one only says yes to heads on which it cannot
disagree with aiohttp. A head still arriving is handed over as soon as it cannot become one of
those (HeadProgress), so the client hears aiohttp's refusal as soon as aiohttp would give it.
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
# Pieces of a field line still coming (HeadProgress): more of its name, perhaps its colon, more of its value.
_NAME_PIECE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]*(?::[ \t!-~]*)?\r?")
_VALUE_PIECE = re.compile(rb"[ \t!-~]*\r?")
# Proxy-Connection: aiohttp's parser (llhttp) honours `Proxy-Connection: close` as `Connection`
# would be; no client of ours sends it, so such a request is aiohttp's.
# transfer_encoding, content_length: aiohttp refuses them (app.refuse_framing_lookalikes).
_REFUSED_FIELDS = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade", "proxy-connection",
                             "transfer_encoding", "content_length"})
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
    headers = _served_fields(text)
    if headers is None or not dict.__contains__(headers, "host"):
        return None  # HTTP/1.1 requires a Host: aiohttp answers 400
    length = dict.get(headers, "content-length")
    if length is None:
        return None  # no body: an error anyway, aiohttp's to answer
    connection = dict.get(headers, "connection")
    close = connection is not None and "close" in {token.strip().lower() for token in connection.split(",")}
    return RequestHead(headers, int(length), close)


class HeadProgress:
    """A head arriving in pieces, checked as it comes: `viable(buffer)` turns False as soon as what came
    can no longer begin a head parse_head serves. The front then hands the connection to aiohttp at
    once, so the client gets aiohttp's verdict when aiohttp would give it, not a 408 after the head
    timeout. Each complete field line is checked when its CRLF arrives, the partial line byte by byte
    (a client sending one byte at a time costs no more than one sending the head at once)."""

    __slots__ = ("_checked", "_colon", "_lines")

    def __init__(self) -> None:
        self._lines = len(REQUEST_LINE)  # where the complete lines checked end (the front checks the request line)
        self._checked = self._lines + 2  # how far the partial line is checked
        self._colon = False  # whether the partial line has its colon

    def viable(self, buffer: bytes | bytearray) -> bool:
        """`buffer`: the connection's bytes so far, beginning with the request line and its CRLF, with no
        blank line yet."""
        last = buffer.rfind(b"\r\n", self._lines + 1)
        if last > 0:  # new complete lines: the head so far must pass what a whole head must pass
            text = bytes(buffer[:last]).decode("latin-1")
            if _HEAD.fullmatch(text) is None or _served_fields(text) is None:
                return False
            self._lines, self._checked, self._colon = last, last + 2, False
        checked, size = self._checked, len(buffer)
        if checked >= size:
            return True
        if checked > self._lines + 2 and buffer[checked - 1] == 13:
            return False  # a CR inside a line (a CRLF would have completed it)
        piece = bytes(buffer[checked:size])
        if self._colon:
            ok = _VALUE_PIECE.fullmatch(piece) is not None
        else:
            ok = _NAME_PIECE.fullmatch(piece) is not None and not (checked == self._lines + 2 and piece[0] == 58)
            self._colon = b":" in piece
        self._checked = size
        return ok


def _served_fields(text: str) -> Headers | None:
    """The fields of checked head text, or None if one of them makes the request aiohttp's."""
    fields = _FIELDS.findall(text)
    if len(fields) > MAX_FIELDS:
        return None  # aiohttp refuses it (400)
    headers = Headers({name.lower(): value for name, value in fields})
    if len(headers) != len(fields) or not _REFUSED_FIELDS.isdisjoint(headers):
        return None  # a repeated field is aiohttp's to judge
    length = dict.get(headers, "content-length")
    if length is not None and (not length.isdigit() or len(length) > 12):
        return None  # not a plain length: aiohttp answers it
    connection = dict.get(headers, "connection")
    if connection is not None and "upgrade" in {token.strip().lower() for token in connection.split(",")}:
        return None
    return headers


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


# A refused connection is closed only after the client stopped sending, or this long: closing a
# socket with unread bytes resets it, and the client could lose the refusal.
LINGER_S = 2.0
LINGER_BYTES = 1 << 20


def refusal(status: int, message: str, *, code: str, retry_after: int | None = None) -> bytes:
    """A whole answer that ends the connection, in the OpenAI error shape, for what is refused before a
    request was read (a head too slow or too large, one connection too many)."""
    body = error_body(message, status=status, code=code)
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return answer_head(status, headers, length=len(body), close=True) + body
