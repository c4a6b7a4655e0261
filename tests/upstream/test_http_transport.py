"""HttpTransport with `http_client: aiohttp`, against aioresponses: what goes on the wire, and how failures
are translated. The default client (router/upstream/http1/) is tested on real sockets in test_fast_client.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import CallbackResult
from yarl import URL

from router.policy.model import Provider, Timeouts
from router.upstream.errors import BodyCut, ConnectFailed, ConnectionLost, FirstByteTimeout, IdleTimeout
from router.upstream.transport import Outgoing
from tests.upstream.aioresponses_compat import CompatResponse, compat_aioresponses
from tests.upstream.conftest import TransportFactory

BASE = "http://aimo.test/api/v1"
URL_ = BASE + "/chat/completions"
KEY = "sk-aimo-secret"
BODY = b'{"model":"8W7X:deepseek-chat-v3",  "messages":[{"role":"user","content":"caf\\u00e9"}],"temperature":0.70}'
COMPLETION = {"id": "c1", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}



def provider(name: str = "aimo", base_url: str = BASE, *, api_key: str | None = KEY,
             headers: dict[str, str] | None = None, timeouts: Timeouts | None = None,
             max_connections: int = 100) -> Provider:
    return Provider(name, base_url, api_key_env="AIMO_API_KEY", api_key=api_key,
                    headers=MappingProxyType(headers or {}), timeouts=timeouts or Timeouts(),
                    max_connections=max_connections, http_client="aiohttp")


def outgoing(prov: Provider, body: bytes = BODY, *, stream: bool = False, request_id: str = "req-1",
             deadline_in: float = 120.0) -> Outgoing:
    return Outgoing(provider=prov, body=body, request_id=request_id, stream=stream,
                    deadline=time.monotonic() + deadline_in)


def sent(mock: compat_aioresponses, url: str = URL_, index: int = 0) -> dict[str, Any]:
    """The keyword arguments of the index-th request aiohttp was asked to make to `url`."""
    return mock.requests[("POST", URL(url))][index].kwargs


@pytest.fixture
def mock() -> Iterator[compat_aioresponses]:
    with compat_aioresponses() as m:
        yield m


class _OpenConnection:
    """The protocol side of a body stream: a connection that stays open (bodies here are tiny)."""

    connected = True
    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _OpenEnded(aiohttp.StreamReader):
    """A body stream whose end never comes: the provider keeps the connection open, silent."""

    def feed_eof(self) -> None:
        pass


class _ResetMidBody(aiohttp.StreamReader):
    """A body stream that is reset by the peer after the data that was fed."""

    def feed_eof(self) -> None:
        self.set_exception(aiohttp.ClientPayloadError("Response payload is not completed"))


class _LiveBody(CompatResponse):
    """A mocked response whose body stream lives on the running loop (aioresponses gives it a
    Mock loop, fine for a complete body but unable to wait). Subclasses choose how it ends."""

    reader_class: type[aiohttp.StreamReader] = aiohttp.StreamReader

    @property  # type: ignore[override]
    def content(self) -> aiohttp.StreamReader | None:
        return self.__dict__.get("_live_content")

    @content.setter
    def content(self, _mock_loop_reader: aiohttp.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        self.__dict__["_live_content"] = self.reader_class(_OpenConnection(), 2**16, loop=loop)  # type: ignore[arg-type]


class StallingResponse(_LiveBody):
    reader_class = _OpenEnded


class ResetResponse(_LiveBody):
    reader_class = _ResetMidBody


# --- what is sent ------------------------------------------------------------------------------

async def test_sends_bearer_key_extra_headers_and_request_id(mock: compat_aioresponses,
                                                              make_transport: TransportFactory) -> None:
    prov = provider(headers={"HTTP-Referer": "https://example.com", "X-Title": "router"})
    mock.post(URL_, payload=COMPLETION)
    reply = await make_transport(prov).send(outgoing(prov, request_id="abc-123"))
    await reply.read()
    headers = sent(mock)["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["HTTP-Referer"] == "https://example.com"
    assert headers["X-Title"] == "router"
    assert headers["X-Request-ID"] == "abc-123"
    assert headers["Content-Type"] == "application/json"


async def test_sends_only_the_providers_headers_never_client_credentials(
        mock: compat_aioresponses, make_transport: TransportFactory) -> None:
    prov = provider(headers={"X-Extra": "1"})
    mock.post(URL_, payload=COMPLETION)
    await (await make_transport(prov).send(outgoing(prov))).read()
    headers = sent(mock)["headers"]
    assert set(headers) == {"Content-Type", "X-Extra", "Authorization", "X-Request-ID", "User-Agent"}
    assert headers["User-Agent"].startswith("llm-router/")


async def test_provider_without_a_key_gets_no_authorization(mock: compat_aioresponses,
                                                            make_transport: TransportFactory) -> None:
    prov = provider(api_key=None)
    mock.post(URL_, payload=COMPLETION)
    await (await make_transport(prov).send(outgoing(prov))).read()
    assert "Authorization" not in sent(mock)["headers"]


async def test_stream_requests_accept_event_streams(mock: compat_aioresponses,
                                                   make_transport: TransportFactory) -> None:
    prov = provider()
    transport = make_transport(prov)
    mock.post(URL_, payload=COMPLETION, repeat=True)
    await (await transport.send(outgoing(prov, stream=True))).read()
    await (await transport.send(outgoing(prov, stream=False))).read()
    assert sent(mock, index=0)["headers"]["Accept"] == "text/event-stream"
    assert "Accept" not in sent(mock, index=1)["headers"]


async def test_body_bytes_are_sent_unchanged(mock: compat_aioresponses,
                                             make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, payload=COMPLETION)
    await (await make_transport(prov).send(outgoing(prov, BODY))).read()
    assert sent(mock)["data"] == BODY


async def test_posts_to_the_providers_chat_completions_url(mock: compat_aioresponses,
                                                           make_transport: TransportFactory) -> None:
    prov = provider(base_url="http://asi1.test/v1")
    mock.post("http://asi1.test/v1/chat/completions", payload=COMPLETION)
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 200
    await reply.read()


async def test_redirects_are_returned_not_followed(mock: compat_aioresponses,
                                                   make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, status=302, headers={"Location": "http://evil.test/steal"})
    mock.post("http://evil.test/steal", payload=COMPLETION)
    mock.get("http://evil.test/steal", payload=COMPLETION)
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 302
    assert reply.headers["Location"] == "http://evil.test/steal"
    reply.close()
    assert sent(mock)["allow_redirects"] is False
    assert all(url.host != "evil.test" for _, url in mock.requests)


async def test_reconfigured_key_is_used_for_the_next_request(mock: compat_aioresponses,
                                                             make_transport: TransportFactory) -> None:
    prov = provider()
    transport = make_transport(prov)
    mock.post(URL_, payload=COMPLETION, repeat=True)
    await (await transport.send(outgoing(prov))).read()
    rotated = provider(api_key="sk-rotated")
    transport.configure({"aimo": rotated})
    await (await transport.send(outgoing(rotated))).read()
    assert sent(mock, index=1)["headers"]["Authorization"] == "Bearer sk-rotated"


# --- what comes back ---------------------------------------------------------------------------

async def test_read_returns_the_body_status_and_headers(mock: compat_aioresponses,
                                                        make_transport: TransportFactory) -> None:
    prov = provider()
    body = json.dumps({**COMPLETION, "thought": "asi1 extra", "executable_data": []}).encode()
    mock.post(URL_, status=200, body=body, headers={"x-ratelimit-remaining-requests": "7"})
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 200
    assert reply.headers["X-RateLimit-Remaining-Requests"] == "7"  # case-insensitive
    assert await reply.read() == body


async def test_error_status_is_a_reply_not_an_exception(mock: compat_aioresponses,
                                                        make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, status=429, payload={"error": {"message": "slow down"}}, headers={"Retry-After": "3"})
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "3"
    assert json.loads(await reply.read())["error"]["message"] == "slow down"


async def test_sse_body_is_parsed_into_events(mock: compat_aioresponses,
                                              make_transport: TransportFactory) -> None:
    prov = provider()
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    stream = (f"data: {json.dumps(chunk)}\n\n: keep-alive\n\nevent: note\ndata: x\n\n"
              "data: [DONE]\n\n").encode()
    mock.post(URL_, body=stream, content_type="text/event-stream")
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    events = [event async for event in reply.events()]
    assert [e.data for e in events] == [json.dumps(chunk), "x", "[DONE]"]
    assert events[0].raw == f"data: {json.dumps(chunk)}\n\n".encode()
    assert events[1].event == "note"
    assert events[2].is_done


ECHO = {"error": {"message": f"Incorrect API key provided: {KEY}; header X-Org-Token: org-token-123456",
                  "type": "invalid_request_error", "code": None}}


@pytest.mark.parametrize(("status", "stream"), [(400, False), (200, False), (422, True)])
async def test_our_key_echoed_in_a_body_is_redacted(mock: compat_aioresponses, make_transport: TransportFactory,
                                                    status: int, stream: bool) -> None:
    prov = provider(headers={"X-Org-Token": "org-token-123456", "X-Short": "ab"})
    mock.post(URL_, status=status, payload=ECHO)
    body = await (await make_transport(prov).send(outgoing(prov, stream=stream))).read()
    message = json.loads(body)["error"]["message"]  # still JSON
    assert message == "Incorrect API key provided: [redacted]; header X-Org-Token: [redacted]"


async def test_our_key_echoed_in_a_stream_event_is_redacted(mock: compat_aioresponses,
                                                            make_transport: TransportFactory) -> None:
    prov = provider()
    clean = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    mock.post(URL_, body=f"data: {json.dumps(clean)}\n\ndata: {json.dumps(ECHO)}\n\n".encode(),
              content_type="text/event-stream")
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    events = [event async for event in reply.events()]
    assert events[0].raw == f"data: {json.dumps(clean)}\n\n".encode()  # untouched
    assert KEY not in events[1].data and KEY.encode() not in events[1].raw
    assert json.loads(events[1].data)["error"]["message"].startswith("Incorrect API key provided: [redacted];")
    assert events[1].raw == f"data: {events[1].data}\n\n".encode()


async def test_stream_ending_inside_an_event_is_a_body_cut(mock: compat_aioresponses,
                                                           make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, body=b'data: {"a": 1}\n\ndata: {"b"', content_type="text/event-stream")
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    seen = []
    with pytest.raises(BodyCut):
        async for event in reply.events():
            seen.append(event.data)
    assert seen == ['{"a": 1}']


async def test_body_that_stalls_is_an_idle_timeout(mock: compat_aioresponses,
                                                  make_transport: TransportFactory) -> None:
    prov = provider(timeouts=Timeouts(idle_s=0.05))
    mock.post(URL_, body=b'{"partial": ', response_class=StallingResponse)
    started = time.monotonic()
    with pytest.raises(IdleTimeout) as info:  # a non-streamed body is read as part of the exchange
        await (await make_transport(prov).send(outgoing(prov))).read()
    assert time.monotonic() - started < 1.0
    assert not info.value.deadline_bound


async def test_stream_that_stalls_after_some_events_is_an_idle_timeout(
        mock: compat_aioresponses, make_transport: TransportFactory) -> None:
    prov = provider(timeouts=Timeouts(idle_s=0.05))
    mock.post(URL_, body=b"data: one\n\ndata: two\n\n", content_type="text/event-stream",
              response_class=StallingResponse)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    seen = []
    with pytest.raises(IdleTimeout):
        async for event in reply.events():
            seen.append(event.data)
    assert seen == ["one", "two"]


async def test_idle_wait_is_capped_by_the_deadline(mock: compat_aioresponses,
                                                   make_transport: TransportFactory) -> None:
    prov = provider(timeouts=Timeouts(idle_s=30.0))
    mock.post(URL_, body=b"data: one\n\n", content_type="text/event-stream", response_class=StallingResponse)
    reply = await make_transport(prov).send(outgoing(prov, stream=True, deadline_in=0.1))
    started = time.monotonic()
    with pytest.raises(IdleTimeout) as info:
        async for _ in reply.events():
            pass
    assert time.monotonic() - started < 1.0
    assert info.value.deadline_bound


async def test_connection_reset_mid_body_is_a_body_cut(mock: compat_aioresponses,
                                                       make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, body=b'{"choices": [', response_class=ResetResponse)
    with pytest.raises(BodyCut, match="mid-body"):
        await (await make_transport(prov).send(outgoing(prov))).read()


# --- failures ----------------------------------------------------------------------------------

async def test_unreachable_provider_is_connect_failed(mock: compat_aioresponses,
                                                      make_transport: TransportFactory) -> None:
    prov = provider()  # nothing registered: aioresponses refuses the connection
    with pytest.raises(ConnectFailed) as info:
        await make_transport(prov).send(outgoing(prov))
    assert not info.value.deadline_bound


async def test_connector_error_is_connect_failed(mock: compat_aioresponses,
                                                 make_transport: TransportFactory) -> None:
    prov = provider()
    key = ConnectionKey("aimo.test", 80, False, True, None, None, None)
    mock.post(URL_, exception=aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused")))
    with pytest.raises(ConnectFailed):
        await make_transport(prov).send(outgoing(prov))


async def test_connect_timeout_is_connect_failed(mock: compat_aioresponses,
                                                 make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, exception=aiohttp.ConnectionTimeoutError("connect timed out"))
    with pytest.raises(ConnectFailed, match="connect timeout"):
        await make_transport(prov).send(outgoing(prov))


@pytest.mark.parametrize("exc", [aiohttp.ServerDisconnectedError(), ConnectionResetError(104, "reset"),
                                 aiohttp.ClientOSError(104, "reset")])
async def test_connection_closed_before_headers_is_connection_lost(
        exc: Exception, mock: compat_aioresponses, make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, exception=exc)
    with pytest.raises(ConnectionLost):
        await make_transport(prov).send(outgoing(prov))


async def test_timeout_before_headers_is_first_byte_timeout(mock: compat_aioresponses,
                                                            make_transport: TransportFactory) -> None:
    prov = provider()
    mock.post(URL_, exception=TimeoutError())
    with pytest.raises(FirstByteTimeout) as info:
        await make_transport(prov).send(outgoing(prov))
    assert not info.value.deadline_bound


async def test_silent_provider_hits_the_first_byte_timeout(mock: compat_aioresponses,
                                                           make_transport: TransportFactory) -> None:
    prov = provider(timeouts=Timeouts(first_byte_s=0.05))

    async def silent(url: URL, **kwargs: Any) -> CallbackResult:
        await asyncio.sleep(10)
        return CallbackResult(payload=COMPLETION)

    mock.post(URL_, callback=silent)
    started = time.monotonic()
    with pytest.raises(FirstByteTimeout) as info:
        await make_transport(prov).send(outgoing(prov))
    assert time.monotonic() - started < 1.0
    assert not info.value.deadline_bound


async def test_first_byte_wait_is_capped_by_the_deadline(mock: compat_aioresponses,
                                                         make_transport: TransportFactory) -> None:
    prov = provider(timeouts=Timeouts(first_byte_s=30.0))

    async def silent(url: URL, **kwargs: Any) -> CallbackResult:
        await asyncio.sleep(10)
        return CallbackResult(payload=COMPLETION)

    mock.post(URL_, callback=silent)
    started = time.monotonic()
    with pytest.raises(FirstByteTimeout) as info:
        await make_transport(prov).send(outgoing(prov, deadline_in=0.05))
    assert time.monotonic() - started < 1.0
    assert info.value.deadline_bound  # the request's deadline fired, not the provider's limit


async def test_callback_response_goes_through_the_compat_shim(mock: compat_aioresponses,
                                                              make_transport: TransportFactory) -> None:
    prov = provider()

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        return CallbackResult(status=201, body=kwargs["data"])

    mock.post(URL_, callback=answer)
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 201
    assert await reply.read() == BODY


# --- connection slots --------------------------------------------------------------------------

async def test_a_finished_reply_frees_its_connection_slot(mock: compat_aioresponses,
                                                          make_transport: TransportFactory) -> None:
    prov = provider(max_connections=1, timeouts=Timeouts(connect_s=0.05))
    transport = make_transport(prov)
    mock.post(URL_, payload=COMPLETION, repeat=True)
    for _ in range(3):
        reply = await transport.send(outgoing(prov))
        await reply.read()


async def test_a_failed_send_frees_its_connection_slot(mock: compat_aioresponses,
                                                       make_transport: TransportFactory) -> None:
    prov = provider(max_connections=1, timeouts=Timeouts(connect_s=0.05))
    transport = make_transport(prov)
    mock.post(URL_, exception=aiohttp.ServerDisconnectedError())
    with pytest.raises(ConnectionLost):
        await transport.send(outgoing(prov))
    mock.post(URL_, payload=COMPLETION)
    assert (await transport.send(outgoing(prov))).status == 200


async def test_full_connection_pool_is_connect_failed_after_connect_timeout(
        mock: compat_aioresponses, make_transport: TransportFactory) -> None:
    prov = provider(max_connections=1, timeouts=Timeouts(connect_s=0.05))
    transport = make_transport(prov)
    mock.post(URL_, payload=COMPLETION, repeat=True)
    held = await transport.send(outgoing(prov))
    with pytest.raises(ConnectFailed, match="slot"):
        await transport.send(outgoing(prov))
    held.close()
    assert (await transport.send(outgoing(prov))).status == 200


async def test_cancelled_send_propagates_and_frees_its_slot(mock: compat_aioresponses,
                                                            make_transport: TransportFactory) -> None:
    prov = provider(max_connections=1, timeouts=Timeouts(connect_s=0.05))
    transport = make_transport(prov)
    entered = asyncio.Event()

    async def silent_once(url: URL, **kwargs: Any) -> CallbackResult:
        # aioresponses keeps a match whose callback was cancelled, so later calls come here too.
        if not entered.is_set():
            entered.set()
            await asyncio.sleep(10)
        return CallbackResult(payload=COMPLETION)

    mock.post(URL_, callback=silent_once, repeat=True)
    task = asyncio.create_task(transport.send(outgoing(prov)))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply = await asyncio.wait_for(transport.send(outgoing(prov)), 1.0)  # the slot was released
    assert reply.status == 200
    await reply.read()
