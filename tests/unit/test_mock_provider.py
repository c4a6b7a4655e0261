"""The fake provider speaks the seeds' wire format and injects each fault as promised.

Real loopback, plain aiohttp client: what is asserted here is what a router
will see on the wire.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from router.mock import (
    Continue,
    FakeProvider,
    Hang,
    Ok,
    RandomFaults,
    RejectPrefill,
    RequestView,
    Reset,
    SlowFirstByte,
    Status,
    Stream,
    resolve,
)
from tests.conftest import FakeProviderFactory

AIMO_MODEL = "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3"
ASI1_EXTRA = {
    "executable_data": [],
    "conversation_id": None,
    "thought": ["The user has initiated a simple greeting."],
    "tool_thought": [],
}
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def chat(*, stream: bool = False, model: str = AIMO_MODEL, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **fields}
    if stream:
        body["stream"] = True
    return body


def events(raw: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, asserting the exact `data: ...\\n\\n` framing."""
    assert raw.endswith(b"\n\n"), raw[-40:]
    frames = raw[:-2].split(b"\n\n")
    assert all(frame.startswith(b"data: ") for frame in frames), frames
    return [frame[len(b"data: "):] for frame in frames]


def joined_content(payloads: list[bytes]) -> str:
    text = ""
    for payload in payloads:
        if payload == b"[DONE]":
            continue
        try:
            parsed = json.loads(payload)
        except ValueError:
            continue
        for choice in parsed.get("choices", []):
            text += choice["delta"].get("content") or ""
    return text


async def read_until_error(resp: aiohttp.ClientResponse) -> tuple[bytes, BaseException | None]:
    received = b""
    try:
        async for piece in resp.content.iter_any():
            received += piece
    except aiohttp.ClientError as exc:
        return received, exc
    return received, None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def provider(fake_provider: FakeProviderFactory) -> FakeProvider:
    return await fake_provider("aimo")


def url(provider: FakeProvider) -> str:
    return f"{provider.base_url}/chat/completions"


# -- normal answers ---------------------------------------------------------------------------


async def test_ok_answers_the_aimo_shape_and_echoes_the_model_id(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    async with session.post(url(provider), json=chat(), headers={"X-Request-ID": "req-1"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-aimo-")
    assert isinstance(body["created"], int)
    assert body["model"] == AIMO_MODEL
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello from aimo"},
                                "finish_reason": "stop"}]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    hit = provider.hits[0]
    assert hit.fault == "ok" and hit.status == 200 and not hit.disconnected
    assert hit.headers["X-Request-ID"] == "req-1" and hit.request_id == "req-1"
    assert hit.headers_ci["x-request-id"] == "req-1"
    assert hit.json == chat() and json.loads(hit.body) == chat()
    assert hit.ended is not None and hit.ended >= hit.started


async def test_asi1_extra_fields_are_in_the_body_byte_for_byte(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Ok(content="Hello! I'm ASI1-Mini.", extra=ASI1_EXTRA))
    async with session.post(url(provider), json=chat(model="asi1-mini")) as resp:
        raw = await resp.read()
    for key, value in ASI1_EXTRA.items():
        assert f'"{key}":{json.dumps(value, separators=(",", ":"))}'.encode() in raw
    assert json.loads(raw)["model"] == "asi1-mini"


async def test_models_lists_the_configured_model(
        fake_provider: FakeProviderFactory, session: aiohttp.ClientSession) -> None:
    asi1 = await fake_provider("asi1", models=["asi1-mini"])
    async with session.get(f"{asi1.base_url}/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["asi1-mini"]
    assert asi1.count == 0  # only chat attempts are hits


async def test_streamed_ok_joins_to_the_full_text_in_openai_chunk_shape(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Ok(content="Quantum computing leverages superposition."))
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        payloads = events(await resp.read())
    assert payloads[-1] == b"[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {AIMO_MODEL}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert joined_content(payloads) == "Quantum computing leverages superposition."


async def test_stream_sends_usage_chunk_when_asked_with_stream_options(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    body = chat(stream=True, stream_options={"include_usage": True})
    async with session.post(url(provider), json=body) as resp:
        payloads = events(await resp.read())
    usage_chunk = json.loads(payloads[-2])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0


async def test_tool_call_answer_with_and_without_stream(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.set_default(Ok(content="TOOL"))
    async with session.post(url(provider), json=chat(tools=TOOLS)) as resp:
        choice = (await resp.json())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "search"
    assert json.loads(call["function"]["arguments"]) == {"query": "Hi", "limit": 3}

    async with session.post(url(provider), json=chat(stream=True, tools=TOOLS)) as resp:
        chunks = [json.loads(p) for p in events(await resp.read())[:-1]]
    calls = [d["tool_calls"][0] for c in chunks if "tool_calls" in (d := c["choices"][0]["delta"])]
    assert calls[0]["function"]["name"] == "search"
    assert "".join(c["function"]["arguments"] for c in calls) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# -- error statuses ---------------------------------------------------------------------------


async def test_rate_limited_sends_429_with_retry_after_and_openai_error(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Status.rate_limited(retry_after="2"))
    async with session.post(url(provider), json=chat()) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        assert resp.headers["Content-Type"] == "application/json"
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "rate_limit_exceeded"
    assert provider.hits[0].fault == "status_429"


@pytest.mark.parametrize(("fault", "status", "code"), [
    (Status.server_error(), 500, "server_error"),
    (Status.server_error(502), 502, "server_error"),
    (Status.unavailable(), 503, "service_unavailable"),
    (Status.context_length(), 400, "context_length_exceeded"),
    (Status.content_policy("violence"), 400, "content_policy_violation"),
    (Status.unauthorized(), 401, "invalid_api_key"),
])
async def test_status_constructors_send_their_status_and_code(
        provider: FakeProvider, session: aiohttp.ClientSession, fault: Status, status: int,
        code: str) -> None:
    provider.script(fault)
    async with session.post(url(provider), json=chat()) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["code"] == code
    if code == "content_policy_violation":
        assert error["message"] == "Your request was rejected by the content policy: violence"


async def test_status_with_raw_body_sends_it_verbatim(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Status(502, body=b"<html>Bad Gateway</html>", headers={"content-type": "text/html"}))
    async with session.post(url(provider), json=chat()) as resp:
        assert resp.status == 502
        assert resp.headers.getall("Content-Type") == ["text/html"]
        assert await resp.read() == b"<html>Bad Gateway</html>"


# -- connection faults ------------------------------------------------------------------------


@pytest.mark.parametrize("rst", [True, False])
async def test_reset_is_a_connection_error_not_a_response(
        provider: FakeProvider, session: aiohttp.ClientSession, rst: bool) -> None:
    provider.script(Reset(rst=rst))
    with pytest.raises(aiohttp.ClientConnectionError) as caught:
        async with session.post(url(provider), json=chat()):
            pass
    expected = aiohttp.ClientOSError if rst else aiohttp.ServerDisconnectedError
    assert isinstance(caught.value, expected)
    await provider.wait_until(lambda: provider.hits[0].ended is not None)
    hit = provider.hits[0]
    assert hit.fault == "reset" and hit.status is None and hit.aborted and not hit.disconnected


async def test_hang_records_the_disconnect_when_the_client_gives_up(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Hang())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1), session.post(url(provider), json=chat()):
            pass
    gave_up = time.monotonic()
    await provider.wait_until(lambda: provider.hits[0].disconnected, within_s=1.0)
    hit = provider.hits[0]
    assert hit.fault == "hang" and hit.status is None
    assert hit.ended is not None and hit.ended - gave_up < 1.0


async def test_slow_first_byte_delays_even_the_headers(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(SlowFirstByte(0.15, then=Status.unavailable()))
    sent = time.monotonic()
    async with session.post(url(provider), json=chat()) as resp:
        headers_at = time.monotonic()
        assert resp.status == 503
    assert headers_at - sent >= 0.15
    assert provider.hits[0].fault == "slow_first_byte"


async def test_stream_first_delay_sends_headers_before_the_first_event(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(content="late", first_delay_s=0.2))
    sent = time.monotonic()
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        headers_at = time.monotonic()
        first_line = await resp.content.readline()
        first_event_at = time.monotonic()
        rest = await resp.read()
    assert headers_at - sent < 0.15
    assert first_event_at - sent >= 0.2
    assert joined_content(events(first_line + rest)) == "late"


async def test_down_resets_every_attempt_until_cleared(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Status.server_error())
    provider.down = True
    for _ in range(2):
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(url(provider), json=chat()):
                pass
    provider.down = False
    async with session.post(url(provider), json=chat()) as resp:
        assert resp.status == 500  # the script was not consumed while down
    assert [hit.fault for hit in provider.hits] == ["down", "down", "status_500"]


# -- stream faults ----------------------------------------------------------------------------


async def test_stream_cut_ends_without_done_as_a_payload_error(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(content="abcdefghij", chunks=5, cut_after=2))
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        assert resp.status == 200
        received, error = await read_until_error(resp)
    assert isinstance(error, aiohttp.ClientPayloadError)
    payloads = events(received)
    assert b"[DONE]" not in payloads and b"finish_reason\":\"stop" not in received
    assert joined_content(payloads) == "abcd"
    assert provider.hits[0].fault == "stream_cut" and not provider.hits[0].disconnected


async def test_stream_stall_keeps_the_connection_open_until_the_client_leaves(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(content="abcdefghij", chunks=5, stall_after=1))
    received = b""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), session.post(url(provider), json=chat(stream=True)) as resp:
            async for piece in resp.content.iter_any():
                received += piece
    assert joined_content(events(received)) == "ab"
    await provider.wait_until(lambda: provider.hits[0].disconnected)
    assert provider.hits[0].fault == "stream_stall"


async def test_stream_malformed_event_is_extra_and_content_stays_complete(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(content="abcdefghij", chunks=5, malformed_at=3))
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        payloads = events(await resp.read())
    assert payloads.count(b'{"choices": [') == 1
    assert payloads.index(b'{"choices": [') == 3  # role chunk, piece 1, piece 2, then the bad one
    assert joined_content(payloads) == "abcdefghij"
    assert payloads[-1] == b"[DONE]"


async def test_stream_without_done_still_ends_cleanly_after_finish_reason(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(content="whole", send_done=False))
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        received, error = await read_until_error(resp)
    assert error is None
    payloads = events(received)
    assert json.loads(payloads[-1])["choices"][0]["finish_reason"] == "stop"
    assert joined_content(payloads) == "whole"


async def test_stream_truncated_is_a_clean_eof_without_finish_reason(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(content="whole answer", chunks=4, send_done=False, send_finish_reason=False))
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        received, error = await read_until_error(resp)
    assert error is None
    assert b"finish_reason\":\"stop" not in received and b"[DONE]" not in received
    assert provider.hits[0].fault == "stream_truncated"


async def test_stream_error_first_is_a_200_whose_first_event_is_an_error(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(error_first=True, error_code="rate_limit_exceeded"))
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        assert resp.status == 200
        payloads = events(await resp.read())
    assert json.loads(payloads[0])["error"]["code"] == "rate_limit_exceeded"
    assert payloads[1:] == [b"[DONE]"]


# -- prefill ----------------------------------------------------------------------------------


async def test_reject_prefill_refuses_only_a_trailing_assistant_message(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.set_default(RejectPrefill())
    prefilled = chat(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "He"}])
    async with session.post(url(provider), json=prefilled) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_prefill"
    assert error["message"] == "assistant prefill is not supported"
    async with session.post(url(provider), json=chat()) as resp:
        assert resp.status == 200
    assert [hit.fault for hit in provider.hits] == ["reject_prefill", "ok"]


async def test_continue_answers_only_what_follows_the_prefill(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    full = "The quick brown fox jumps over the lazy dog."
    provider.set_default(Continue(full))
    prefilled = chat(stream=True, messages=[{"role": "user", "content": "Go"},
                                            {"role": "assistant", "content": "The quick brown"}])
    async with session.post(url(provider), json=prefilled) as resp:
        assert joined_content(events(await resp.read())) == " fox jumps over the lazy dog."
    async with session.post(url(provider), json=chat()) as resp:
        assert (await resp.json())["choices"][0]["message"]["content"] == full
    assert provider.hits[0].fault == "continue"


# -- script, default, bookkeeping -------------------------------------------------------------


async def test_script_applies_in_order_then_the_default(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Status.rate_limited(None), Status.server_error(503))
    statuses = []
    for _ in range(3):
        async with session.post(url(provider), json=chat()) as resp:
            statuses.append(resp.status)
            assert "Retry-After" not in resp.headers
    assert statuses == [429, 503, 200]
    assert provider.count == 3 and provider.pending == ()
    times = provider.times()
    assert times == sorted(times) and len(times) == 3


async def test_invalid_body_gets_400_without_consuming_the_script(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Status.server_error())
    async with session.post(url(provider), data=b"{not json",
                            headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert provider.hits[0].json is None and provider.hits[0].fault == "invalid_request"
    assert len(provider.pending) == 1


async def test_api_key_is_checked_when_configured(
        fake_provider: FakeProviderFactory, session: aiohttp.ClientSession) -> None:
    asi1 = await fake_provider("asi1", api_key="sk-right")
    for token, status in (("sk-wrong", 401), ("sk-right", 200)):
        # ASI1's docs spell the scheme "bearer": the check must not care about its case.
        async with session.post(url(asi1), json=chat(), headers={"Authorization": f"bearer {token}"}) as resp:
            assert resp.status == status
    assert [hit.fault for hit in asi1.hits] == ["unauthorized", "ok"]


async def test_stop_does_not_wait_for_hanging_handlers(session: aiohttp.ClientSession) -> None:
    provider = FakeProvider("hang")
    base_url = await provider.start()
    provider.set_default(Hang())
    request = asyncio.create_task(session.post(f"{base_url}/chat/completions", json=chat()))
    await provider.wait_for_hits(1)
    began = time.monotonic()
    await provider.stop()
    assert time.monotonic() - began < 0.5
    with pytest.raises(aiohttp.ClientConnectionError):
        await request
    assert provider.hits[0].ended is not None and not provider.hits[0].disconnected


async def test_fixture_starts_independent_providers(fake_provider: FakeProviderFactory) -> None:
    first, second = await fake_provider(), await fake_provider()
    assert first.base_url != second.base_url
    assert first.name != second.name


# -- random faults (no network) ---------------------------------------------------------------


def test_random_faults_are_reproducible_with_a_seed() -> None:
    rates = {"429": 0.2, "500": 0.2, "reset": 0.1, "cut": 0.1}
    request = RequestView(chat(stream=True))

    def names(seed: int) -> list[str]:
        faults = RandomFaults(rates, seed=seed, base=Ok())
        return [resolve(faults, request).name for _ in range(200)]

    assert names(7) == names(7)
    counts = {name: names(7).count(name) for name in set(names(7))}
    assert set(counts) == {"status_429", "status_500", "reset", "stream_cut", "ok"}
    assert 60 < counts["ok"] < 100  # 40% expected of 200


def test_random_faults_reject_unknown_names_and_rates_over_one() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        RandomFaults({"timeout": 0.1})
    with pytest.raises(ValueError, match="sum"):
        RandomFaults({"429": 0.6, "500": 0.6})


def test_random_429_carries_retry_after() -> None:
    fault = resolve(RandomFaults({"429": 1.0}, retry_after="3"), RequestView(chat()))
    assert isinstance(fault, Status) and fault.headers == {"Retry-After": "3"}


async def test_client_leaving_mid_stream_is_recorded_as_a_disconnect(
        provider: FakeProvider, session: aiohttp.ClientSession) -> None:
    provider.script(Stream(content="x" * 40, chunks=40, interval_s=0.01))
    async with session.post(url(provider), json=chat(stream=True)) as resp:
        await resp.content.readline()  # the role chunk; then leave with the body unread
    await provider.wait_until(lambda: provider.hits[0].disconnected)
    assert provider.hits[0].status == 200
