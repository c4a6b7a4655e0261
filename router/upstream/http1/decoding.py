"""Content-Encoding for the lean client: gzip and deflate, inflated in bounded pieces.

aiohttp's client reads the same codings: gzip (and x-gzip), deflate as the RFC says (zlib-wrapped)
or as some servers send it (raw), identity. A compressed read can inflate a thousandfold (a gzip
bomb), so no piece is larger than DECODE_STEP: the connection counts each against the answer's
limit before the next is inflated.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

DECODE_STEP = 256 * 1024


class Undecodable(ValueError):
    """The body does not decode with its Content-Encoding."""


class BodyDecoder:
    __slots__ = ("_decoder", "_sniff")

    def __init__(self, decoder: zlib._Decompress, *, sniff: bool = False) -> None:
        self._decoder = decoder
        self._sniff = sniff  # deflate: the first body bytes decide between zlib and raw

    @classmethod
    def of(cls, encoding: str) -> BodyDecoder | None:
        """The decoder for a Content-Encoding value, None for none; ValueError if unsupported."""
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            return cls(zlib.decompressobj(16 + zlib.MAX_WBITS))
        if encoding == "deflate":
            return cls(zlib.decompressobj(), sniff=True)
        if encoding in ("", "identity"):
            return None
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")

    def decode(self, body: bytes) -> Iterator[bytes]:
        """The decoded pieces of `body`, each at most DECODE_STEP; Undecodable if it does not decode."""
        if self._sniff and body:
            self._sniff = False
            if body[0] & 0x0F != 8:  # not a zlib header (compression method 8): raw deflate, as aiohttp reads it
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        decoder = self._decoder
        try:
            while body:
                piece = decoder.decompress(body, DECODE_STEP)
                body = decoder.unconsumed_tail
                if piece:
                    yield piece
        except zlib.error as exc:
            raise Undecodable(str(exc)) from None

    def flush(self) -> bytes:
        try:
            return self._decoder.flush()
        except zlib.error as exc:
            raise Undecodable(str(exc)) from None
