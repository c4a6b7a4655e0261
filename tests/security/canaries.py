"""Canary secrets and the leak detector the security tests share.

Every canary is a provider or client key that the tests configure through the
environment, exactly as production does. A leak is any of them, or a recognisable
piece of one (its first or last 8 characters, its base64 form), appearing in
something an operator or a caller can see: a log record, the access log, a
metric, an HTTP response (status line, headers, body), an exception's text or
repr, or the output of the CLI.

The canaries are shaped like real keys (letters, digits, `-`), and their 8-character
ends are chosen to be improbable anywhere else: no hex, no dictionary words.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Every logger a library or the router may write to, named so it exists (and can be set to DEBUG)
# before the code under test first uses it: the in-process fixtures and debug_serve both do.
LIBRARY_LOGGERS = ("aiohttp", "aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server",
                   "aiohttp.web", "aiohttp.websocket", "asyncio", "router", "router.access", "router.server",
                   "router.demo")

# Environment variable -> canary. Provider keys reach their own provider and nothing else;
# client keys reach nothing at all (the daemon only compares their digests).
PROVIDER_KEYS: Mapping[str, str] = {
    "SEC_ALPHA_KEY": "Zx9KqWmR-canary-provider-alpha-Tq8RwNyP",
    "SEC_BETA_KEY": "Hv3NpLsJ-canary-provider-beta-Ug7MkQzY",
    "SEC_GAMMA_KEY": "Wr6TjXoK-canary-provider-gamma-Pb2VnHsL",
}
CLIENT_KEYS: Mapping[str, str] = {
    "SEC_WEB_KEY": "Qm4YtGzV-canary-client-web-Lk9JpXrW",
    "SEC_BATCH_KEY": "Jn8RvKwT-canary-client-batch-Xs5QmZyH",
}
# A client known to the daemon only by the SHA-256 digest of its key (`key_sha256`).
DIGEST_CLIENT_KEY = "Yp2WsNqX-canary-client-ops-Vt6KrJmZ"
DIGEST_CLIENT_SHA256 = hashlib.sha256(DIGEST_CLIENT_KEY.encode()).hexdigest()

ALPHA_KEY, BETA_KEY, GAMMA_KEY = PROVIDER_KEYS.values()
WEB_KEY, BATCH_KEY = CLIENT_KEYS.values()
ALL_CANARIES: tuple[str, ...] = (*PROVIDER_KEYS.values(), *CLIENT_KEYS.values(), DIGEST_CLIENT_KEY)
CANARY_ENV: dict[str, str] = {**PROVIDER_KEYS, **CLIENT_KEYS}


def needles(secret: str) -> dict[str, str]:
    """The forms of `secret` that count as a leak, by description."""
    return {
        "the whole key": secret,
        "its first 8 characters": secret[:8],
        "its last 8 characters": secret[-8:],
        "its base64 form": base64.b64encode(secret.encode()).decode().rstrip("="),
    }


_NEEDLES: tuple[tuple[str, str, str], ...] = tuple(
    (secret, form, needle) for secret in ALL_CANARIES for form, needle in needles(secret).items())


def find_leaks(text: str | bytes) -> list[str]:
    """Descriptions of every canary form found in `text` (empty when clean)."""
    value = text.decode("utf-8", "replace") if isinstance(text, bytes | bytearray) else text
    return [f"{form} of {secret[:8]}... ({needle!r})" for secret, form, needle in _NEEDLES if needle in value]


@dataclass(slots=True)
class Sink:
    where: str  # e.g. "log record aiohttp.client DEBUG", "HTTP 502 body of POST /v1/chat/completions"
    text: str


@dataclass(slots=True)
class LeakWatch:
    """Everything observable collected during one test, checked for canaries at its end."""

    sinks: list[Sink] = field(default_factory=list)

    def add(self, where: str, *texts: str | bytes | Iterable[str]) -> None:
        for text in texts:
            if isinstance(text, bytes | bytearray):
                value = bytes(text).decode("utf-8", "replace")
            elif isinstance(text, str):
                value = text
            else:
                value = "\n".join(text)
            self.sinks.append(Sink(where, value))

    def add_exception(self, where: str, exc: BaseException) -> None:
        """An exception as a caller could show it: str, repr, the formatted traceback, and the
        same for every exception chained to it the way tracebacks and error trackers show."""
        import traceback

        self.add(f"{where}: formatted", "".join(traceback.format_exception(exc)))
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.add(f"{where}: {type(current).__name__} str/repr/args", str(current), repr(current),
                     repr(current.args))
            current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)

    def leaks(self) -> list[str]:
        found = []
        for sink in self.sinks:
            for leak in find_leaks(sink.text):
                excerpt = sink.text[:300].replace("\n", "\\n")
                found.append(f"{leak} in {sink.where}: {excerpt}")
        return found

    def assert_clean(self) -> None:
        found = self.leaks()
        assert not found, "secret leaked:\n" + "\n".join(found[:20])

    @property
    def size(self) -> int:
        return len(self.sinks)
