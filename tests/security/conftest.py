"""The leak watch every test in tests/security runs under.

`leak_watch` (autouse) turns DEBUG logging on for every logger, aiohttp's and
asyncio's included, captures every record, and at the end of the test checks
every record, plus whatever the test added (HTTP answers read through
`watched_http`, exception texts, CLI and subprocess output, /metrics), for the
canaries of `canaries.py`. A test does not have to remember to check: anything
it lets the watch see is checked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tests.security.canaries import LIBRARY_LOGGERS, LeakWatch
from tests.server.conftest import daemon  # noqa: F401  (the in-process daemon fixture, reused)

# Every attribute a plain LogRecord has; anything else on a record was passed as `extra=`.
_STANDARD_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(pathname)s:%(lineno)d: %(message)s")


class _Capture(logging.Handler):
    """Keeps each record as text, rendered when it is emitted (as a log file would get it)."""

    def __init__(self, watch: LeakWatch) -> None:
        super().__init__(logging.DEBUG)
        self._watch = watch
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        where = f"log record {record.name} {record.levelname}"
        try:
            line = _FORMAT.format(record)  # with the formatted traceback and stack, if any
        except Exception as exc:  # a record that cannot even be formatted is a bug of its own
            line = f"<unformattable record {record.msg!r}: {exc!r}>"
        extras = {key: value for key, value in record.__dict__.items() if key not in _STANDARD_RECORD_KEYS}
        # Structured handlers (JSON logging) serialise args and extras too: check them raw.
        self._watch.add(where, line, repr(record.msg), repr(record.args), repr(extras))


@pytest.fixture(autouse=True)
def leak_watch() -> Iterator[LeakWatch]:
    watch = LeakWatch()
    handler = _Capture(watch)
    root = logging.getLogger()
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name)
    loggers = [root, *(logger for logger in logging.root.manager.loggerDict.values()
                       if isinstance(logger, logging.Logger))]
    saved = [(logger, logger.level, logger.disabled, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    for logger in loggers[1:]:
        logger.propagate = True
    root.addHandler(handler)
    try:
        yield watch
    finally:
        root.removeHandler(handler)
        for logger, level, disabled, propagate in saved:
            logger.setLevel(level)
            logger.disabled = disabled
            logger.propagate = propagate
    watch.assert_clean()


@dataclass(slots=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class WatchedHttp:
    """An HTTP client whose every answer (status line, raw headers, whole body) goes to the watch."""

    def __init__(self, session: aiohttp.ClientSession, watch: LeakWatch) -> None:
        self._session = session
        self._watch = watch
        self.answers = 0

    async def request(self, method: str, url: str, **kwargs: Any) -> Answer:
        async with self._session.request(method, url, **kwargs) as response:
            body = await response.read()
            raw_headers = [f"{name.decode('latin-1')}: {value.decode('latin-1')}"
                           for name, value in response.raw_headers]
        where = f"HTTP {response.status} answer to {method} {response.url.path}"
        self._watch.add(where, f"{response.status} {response.reason}", raw_headers, body)
        self.answers += 1
        return Answer(response.status, response.headers, body)

    async def post(self, url: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any) -> Answer:
        return await self.request("POST", url, headers=dict(headers or {}), **kwargs)

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> Answer:
        return await self.request("GET", url, headers=dict(headers or {}))


@pytest.fixture
async def watched_http(leak_watch: LeakWatch) -> AsyncIterator[WatchedHttp]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield WatchedHttp(session, leak_watch)
