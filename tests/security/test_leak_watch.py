"""The leak watch itself: it must see what it claims to see, or every other test here proves nothing."""

from __future__ import annotations

import base64
import logging

import pytest

from tests.security.canaries import ALL_CANARIES, ALPHA_KEY, WEB_KEY, LeakWatch, find_leaks
from tests.security.conftest import WatchedHttp


@pytest.mark.parametrize("secret", ALL_CANARIES)
def test_every_form_of_every_canary_is_found(secret: str) -> None:
    assert find_leaks(f"x {secret} y")
    assert find_leaks(f"key={secret[:8]}***")
    assert find_leaks(f"...{secret[-8:]}")
    assert find_leaks(base64.b64encode(secret.encode()))
    assert not find_leaks(secret[:7] + "_" + secret[8:-8] + "_" + secret[-7:])


def test_canary_ends_are_distinct() -> None:
    ends = [piece for secret in ALL_CANARIES for piece in (secret[:8], secret[-8:])]
    assert len(set(ends)) == len(ends)


@pytest.mark.parametrize("logger_name", ["aiohttp.client", "aiohttp.server", "aiohttp.access", "asyncio",
                                         "router.server", "some.library.created.later"])
def test_debug_records_of_any_logger_reach_the_watch(leak_watch: LeakWatch, logger_name: str) -> None:
    before = leak_watch.size
    logging.getLogger(logger_name).debug("header %s", f"Bearer {ALPHA_KEY[:8]}")

    assert leak_watch.size > before
    assert leak_watch.leaks()
    leak_watch.sinks.clear()


def test_extras_and_tracebacks_of_records_are_checked(leak_watch: LeakWatch) -> None:
    log = logging.getLogger("router.test")
    log.info("request done", extra={"client_key": WEB_KEY})
    assert leak_watch.leaks()
    leak_watch.sinks.clear()
    try:
        raise ValueError(f"bad {ALPHA_KEY}")
    except ValueError:
        log.exception("failed")
    assert leak_watch.leaks()
    leak_watch.sinks.clear()


def test_exceptions_are_checked_along_their_chain(leak_watch: LeakWatch) -> None:
    try:
        try:
            raise KeyError(ALPHA_KEY)
        except KeyError as inner:
            raise RuntimeError("outer, clean") from inner
    except RuntimeError as exc:
        leak_watch.add_exception("test", exc)
    assert leak_watch.leaks()
    leak_watch.sinks.clear()

    try:
        try:
            raise KeyError(ALPHA_KEY)
        except KeyError:
            raise RuntimeError("outer, clean") from None  # shown by no traceback: not a leak
    except RuntimeError as exc:
        leak_watch.add_exception("test", exc)
    assert not leak_watch.leaks()


async def test_http_answers_are_checked_headers_and_body(leak_watch: LeakWatch, watched_http: WatchedHttp,
                                                         fake_provider) -> None:
    from router.mock import Status

    fake = await fake_provider("echo")
    fake.script(Status(418, body=f"teapot {WEB_KEY}"), Status(200, body=b"{}", headers={"X-K": ALPHA_KEY[-8:]}))
    await watched_http.post(f"{fake.base_url}/chat/completions", json={"model": "m", "messages": [{"role": "u"}]})
    assert any("body" in leak or WEB_KEY[:8] in leak for leak in leak_watch.leaks())
    leak_watch.sinks.clear()
    await watched_http.post(f"{fake.base_url}/chat/completions", json={"model": "m", "messages": [{"role": "u"}]})
    assert leak_watch.leaks()
    leak_watch.sinks.clear()
