"""The lean client's idle limit on a stream's reads: one timer per response, moved by each wait.

`Response.readany_within(limit)` fails a wait that saw nothing for `limit` seconds, however
many reads came before it, and leaves no timer behind once the body ended.
"""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from router.upstream.errors import BodyCut
from router.upstream.http1.response import Response


class _Connection:
    def resume_reading(self) -> None:
        pass

    def discard(self, response: Response) -> None:
        pass

    def release(self, response: Response) -> None:
        pass

    def finish(self, response: Response) -> None:
        pass


def response() -> Response:
    return Response(_Connection(), 200, CIMultiDictProxy(CIMultiDict()))  # type: ignore[arg-type]


async def test_a_wait_with_nothing_arriving_times_out() -> None:
    body = response()
    with pytest.raises(TimeoutError):
        await body.readany_within(0.02)


async def test_reads_that_keep_coming_never_time_out_however_long_the_stream() -> None:
    body = response()
    loop = asyncio.get_running_loop()
    for index in range(8):  # 8 waits of ~limit/4 each: twice the limit in all
        loop.call_later(0.05, body.feed, b"event %d" % index)
        assert await body.readany_within(0.2) == b"event %d" % index
    body.end()
    assert await body.readany_within(0.2) == b""


async def test_the_timer_moves_with_each_wait_and_is_gone_once_the_body_ended() -> None:
    body = response()
    loop = asyncio.get_running_loop()
    loop.call_soon(body.feed, b"a")
    assert await body.readany_within(30.0) == b"a"
    timer = body._watchdog
    assert timer is not None  # still armed: the next wait only moves the expiry
    loop.call_soon(body.feed, b"b")
    assert await body.readany_within(30.0) == b"b"
    assert body._watchdog is timer  # the same timer, not one per read
    body.end()
    assert body._watchdog is None and timer.cancelled()


async def test_a_failure_while_waiting_is_the_failure_not_a_timeout() -> None:
    body = response()
    asyncio.get_running_loop().call_soon(body.fail, BodyCut("reset"))
    with pytest.raises(BodyCut):
        await body.readany_within(30.0)
    assert body._watchdog is None
