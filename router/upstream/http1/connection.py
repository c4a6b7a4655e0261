"""One keep-alive HTTP/1.1 connection to a provider, parsed by llhttp (httptools).

It carries one exchange at a time, through these states:

    IDLE --send--> AWAITING_HEAD --head--> READING --end--> COMPLETE --release--> IDLE (pooled)
                                              |                 ^
                                              +--finish-->  DRAINING (the rest is read and dropped)

and CLOSED from anywhere. The answer's body is a separate `Response`, so a connection
that fails after an answer arrived whole leaves that answer intact.

A connection goes back to the pool only when its answer ended cleanly, the provider
allows keep-alive, and nothing arrived after the answer: a byte beyond it (the start of
a second answer, say) would otherwise be read as the answer to the next request, from any
client. It is put back only after the whole read that ended the answer was parsed.

Errors are the transport's own: `ConnectionLost` before the head (closed, reset, not
HTTP), `BodyCut` in the body.
"""

from __future__ import annotations

import asyncio
import enum
import select
from typing import TYPE_CHECKING

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from router.upstream.errors import BodyCut, ConnectionLost, ResponseTooLarge, StaleConnection, TransportError
from router.upstream.http1.decoding import BodyDecoder, Undecodable
from router.upstream.http1.response import Response

if TYPE_CHECKING:
    from router.upstream.http1.pool import Pool

# Read-side back-pressure: stop reading from the provider while this much is buffered and unread.
HIGH_WATER = 256 * 1024
# Bodies up to this size are sent in the same write as the head (one send, one packet when it fits).
JOIN_LIMIT = 64 * 1024
# finish(): how long, and how many bytes, the rest of an answer the caller no longer needs may take
# before the connection is closed rather than reused. After a stream's `[DONE]` the rest is the
# chunked terminator, a few bytes that arrive a moment later.
DRAIN_S = 2.0
DRAIN_LIMIT = 64 * 1024
# aiohttp's limits on an answer's head, so the two clients accept the same heads: a header's name and
# value together (or the status line) of at most 8,190 bytes, at most 128 fields. llhttp hands a header to its
# callback only once it is complete (httptools gathers it in memory meanwhile), so a line still
# growing is measured as it arrives, and the head as a whole is bounded too.
MAX_LINE_BYTES = 8190
MAX_FIELDS = 128
MAX_HEAD_BYTES = (MAX_FIELDS + 2) * (MAX_LINE_BYTES + 2)


class State(enum.Enum):
    IDLE = "idle"  # no exchange: just connected, or back in the pool
    AWAITING_HEAD = "awaiting_head"  # the request is written; the answer's head has not arrived
    READING = "reading"  # the head arrived; the body goes to the Response as it comes
    DRAINING = "draining"  # the reader stopped early; the rest of the body is read and dropped
    COMPLETE = "complete"  # the answer ended; it waits for its reader to release the connection
    CLOSED = "closed"


class _Unexpected(Exception):
    """Raised inside the parser's callbacks: the bytes are not a valid answer to our request."""


class _TooLarge(Exception):
    """Raised inside the parser's callbacks: the answer went over a limit."""


class Connection(asyncio.Protocol):
    __slots__ = ("_body_bytes", "_decoder", "_drain_timer", "_drained", "_fd", "_head", "_head_bytes", "_headers",
                 "_keep_alive", "_limit", "_line_bytes", "_nul", "_paused", "_pool", "_put_back_after_read",
                 "_received", "_reusable", "_until_eof", "idle_since", "parser", "response", "reused",
                 "state", "transport")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._fd = -1
        self.parser = httptools.HttpResponseParser(self)
        # aiohttp's response parser is as lenient, and the two clients must accept the same answers:
        # folded headers (obs-fold) and other odd header bytes (NUL is still refused, in on_header),
        # a bare LF as a line end, spaces after a chunk size.
        self.parser.set_dangerous_leniencies(lenient_headers=True, lenient_optional_cr_before_lf=True,
                                             lenient_spaces_after_chunk_size=True)
        self.state = State.IDLE
        self.response: Response | None = None
        self.idle_since = 0.0
        self._head: asyncio.Future[Response] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._decoder: BodyDecoder | None = None
        self._keep_alive = False
        self._until_eof = False
        self._paused = False
        self._reusable = True  # False once anything unexpected was seen: never pooled again
        self._put_back_after_read = False
        self._received = False  # a byte of the current answer arrived
        self._limit = 0  # the most the current answer's body may hold, decoded
        self._body_bytes = 0
        self._head_bytes = 0
        self._line_bytes = 0  # the head's unfinished line so far
        self._nul = False  # a NUL byte came while the head did
        self.reused = False  # the current exchange runs on a connection that served an earlier one
        self._drained = 0
        self._drain_timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # -- one exchange ----------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, loop: asyncio.AbstractEventLoop,
             limit: int = 32 * 1024 * 1024) -> asyncio.Future[Response]:
        """Write the request; the returned future resolves to the Response once its head arrived.
        `limit`: the most the answer's body may hold once decoded (ResponseTooLarge beyond it)."""
        assert self.state is State.IDLE, self.state
        transport = self.transport
        assert transport is not None
        self.state = State.AWAITING_HEAD
        self.response = None
        self._received = False
        self._limit = limit
        self._body_bytes = self._head_bytes = self._line_bytes = 0
        self._nul = False
        self._headers = []
        self._decoder = None
        self._head = future = loop.create_future()
        if len(body) <= JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        return future

    def release(self, response: Response) -> None:
        """The reader is done with `response`: back to the pool if it ended cleanly, else close."""
        if response is not self.response:
            return  # an earlier exchange's answer: the connection has moved on
        self.response = None
        if self.state is State.COMPLETE and self._keep_alive and self._reusable:
            self.state = State.IDLE
            self._pool.put_back(self)
        else:
            self.close()

    def finish(self, response: Response) -> None:
        """The reader stopped before the body ended: drop the rest as it comes (at most DRAIN_S and
        DRAIN_LIMIT bytes) and pool the connection when the answer ends; otherwise close.
        Reusing it spares the next request a new connection (on TLS, a handshake)."""
        if response is not self.response:
            return
        if self.state is not State.READING or not self._keep_alive or self._until_eof or not self._reusable:
            self.release(response)
            return
        self.state = State.DRAINING
        self._drained = 0
        self.resume_reading()
        self._drain_timer = asyncio.get_running_loop().call_later(DRAIN_S, self.close)

    def discard(self, response: Response) -> None:
        """The reader gives up on `response`: the connection cannot be reused for anything else."""
        if response is self.response:
            self.close()

    def close(self) -> None:
        self._cancel_drain_timer()
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._reusable = False
        if self.transport is not None:
            self.transport.close()

    def is_stale(self) -> bool:
        """An idle connection that must not be reused: closed, or its socket readable (the provider's
        close, or bytes nobody asked for, that the event loop has not read yet). httpcore checks a
        pooled connection the same way."""
        if self.state is not State.IDLE or self.transport is None or self.transport.is_closing():
            return True
        if self._fd < 0:
            return False
        try:
            readable, _, _ = select.select((self._fd,), (), (), 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and self.state is not State.CLOSED:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1  # for is_stale; valid while the transport is open

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is State.IDLE or state is State.COMPLETE:
            # Bytes nobody asked for (an idle connection, or more after a complete answer): the
            # connection's framing can no longer be trusted, so it is not used again.
            self._fail(ConnectionLost("unsolicited data from the provider"))
            return
        if state is State.CLOSED:
            return
        self._received = True
        if state is State.AWAITING_HEAD:
            self._head_bytes += len(data)
            if b"\0" in data:  # rare: on_headers_complete then looks for it in the values
                self._nul = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101: its head is the answer (aiohttp's reading too), and the connection speaks HTTP no more.
            self._fail(ConnectionLost("malformed response (unexpected protocol upgrade)"))
            return
        except httptools.HttpParserError as exc:
            context = exc.__context__
            if isinstance(context, _TooLarge):
                self._fail(ResponseTooLarge(str(context)))
                return
            detail = str(context) if isinstance(context, _Unexpected) else f"invalid HTTP response ({exc})"
            error = ConnectionLost(f"malformed response ({detail})")
            if self.state is State.COMPLETE and not self._keep_alive and self.response is not None:
                # Bytes after an answer that said the connection ends with it (llhttp's strict mode and
                # aiohttp refuse them too): its framing is wrong, a Content-Length too short, say, so the
                # answer is not trusted. It ended in this very read: its reader has not seen it yet.
                self.response.retract(error)
            self._fail(error)
            return
        if self.state is State.AWAITING_HEAD:  # all of this read was head: a line still growing counts now
            newline = data.rfind(b"\n")
            self._line_bytes = self._line_bytes + len(data) if newline < 0 else len(data) - newline - 1
            # (A raw line also holds `: ` and its CR, which aiohttp's limit leaves out.)
            if self._line_bytes > MAX_LINE_BYTES + 3 or self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ResponseTooLarge(f"response head over its limits ({MAX_LINE_BYTES} bytes a line, "
                                            f"{MAX_HEAD_BYTES} in all)"))
                return
        if self._put_back_after_read:  # the drained answer ended in this read, and nothing followed it
            self._put_back_after_read = False
            self._finish_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        closed_here = self.state is State.CLOSED  # by close(): the pool, the reader or a failure
        self._pool.forget(self)
        if self._until_eof and not closed_here and exc is None and self.state is State.READING:
            self._keep_alive = False
            self.on_message_complete()  # a body without length or chunking ends at the provider's EOF
        elif closed_here:
            self._fail(ConnectionLost("connection closed by the router"), body_detail="closed by the router")
        else:
            detail = f"{type(exc).__name__}" if exc is not None else "closed by the provider"
            error = StaleConnection if self.reused and not self._received else ConnectionLost
            self._fail(error(f"connection lost before the head ({detail})"), body_detail=detail)
        self._cancel_drain_timer()
        self.state = State.CLOSED

    def pause_writing(self) -> None:
        pass  # requests are small; the transport buffers the rest of a large one

    def resume_writing(self) -> None:
        pass

    def _fail(self, head_error: TransportError, *, body_detail: str | None = None) -> None:
        """The connection is done for; whoever waits on it learns why. An answer that already ended
        stays as it is."""
        head = self._head
        if head is not None and not head.done():
            head.set_exception(head_error)
        if self.response is not None:
            self.response.fail(head_error if isinstance(head_error, ResponseTooLarge)
                               else BodyCut(f"connection lost mid-body ({body_detail or head_error})"))
        self.close()

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.state is not State.AWAITING_HEAD:
            # A second answer to one request: whatever it is, it is not the next request's answer.
            self._reusable = False
            raise _Unexpected("bytes after the complete answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= MAX_FIELDS:
            raise _TooLarge(f"more than {MAX_FIELDS} response header fields")
        headers.append((name, value))  # checked and decoded together, once the head is complete

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue, 103 Early Hints): wait
            self._headers = []
            return
        raw = self._headers
        if self._head_bytes > MAX_LINE_BYTES:  # only a head this long can hold a line over the limit
            for name, value in raw:
                if len(name) + len(value) > MAX_LINE_BYTES:  # aiohttp counts the name and the value, not ": "
                    raise _TooLarge(f"a response header line over {MAX_LINE_BYTES} bytes")
        if self._nul:
            for _, value in raw:
                if b"\0" in value:  # lenient parsing lets it through; aiohttp refuses it, and so do we
                    raise _Unexpected("a NUL byte in a response header")
        headers = CIMultiDict([(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw])
        self._keep_alive = self.parser.should_keep_alive()
        # No length and no chunking (no Transfer-Encoding, or one whose last coding is not `chunked`:
        # `identity`, `chunked, identity`, `chunkedchunked`): the body ends where the connection does
        # (RFC 9112, section 6.3).
        codings = ",".join(headers.getall("Transfer-Encoding", ())).split(",")
        self._until_eof = "Content-Length" not in headers and codings[-1].strip().lower() != "chunked"
        try:
            self._decoder = BodyDecoder.of(headers.get("Content-Encoding", ""))
        except ValueError as exc:
            raise _Unexpected(str(exc)) from None
        response = self.response = Response(self, status, CIMultiDictProxy(headers))
        self.state = State.READING
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.state is State.DRAINING:
            self._drained += len(body)
            if self._drained > DRAIN_LIMIT:
                self.close()
            return
        response = self.response
        if response is None or self.state is not State.READING:
            return
        decoder = self._decoder
        if decoder is None:
            self._take(response, body)
            return
        try:
            for piece in decoder.decode(body):  # each piece counted against the limit before the next
                self._take(response, piece)
        except Undecodable as exc:
            response.fail(BodyCut(f"body does not decode ({exc})"))
            raise _Unexpected("body does not decode") from None

    def _take(self, response: Response, data: bytes) -> None:
        """Decoded body bytes for the reader: within the limit, paused once too much waits unread."""
        self._body_bytes += len(data)
        if self._body_bytes > self._limit:
            raise _TooLarge(f"response body over max_response_bytes ({self._limit})")
        if response.feed(data) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        state = self.state
        if state is State.AWAITING_HEAD:  # the end of an interim answer
            return
        if state is State.DRAINING:
            self.state = State.COMPLETE
            self._put_back_after_read = True  # once the rest of this read is parsed (data_received)
            return
        if state is not State.READING:
            return
        response = self.response
        assert response is not None
        if self._decoder is not None:
            try:
                tail = self._decoder.flush()
            except Undecodable as exc:
                response.fail(BodyCut(f"body does not decode ({exc})"))
                raise _Unexpected("body does not decode") from None
            if tail:
                self._take(response, tail)
        self.state = State.COMPLETE
        response.end()

    def _finish_drain(self) -> None:
        self._cancel_drain_timer()
        response = self.response
        if response is not None:
            self.release(response)

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
