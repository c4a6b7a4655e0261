"""What goes upstream and what comes back, byte for byte (docs/architecture.md §2 and §4.3)."""

from __future__ import annotations

import json

from router import Router
from router.mock import Ok, Status, Stream
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body, stream_body
from tests.support.policies import AIMO_MODEL, make_policy, provider_entry, tiered_policy

RAW_BODY = (
    b'{"temperature": 0.70, "model": "chat", "messages": [{"role": "user", "content": "caf\\u00e9 \xe2\x98\x95"}],'
    b' "top_p":1.0,"max_tokens": 64, "metadata": {"trace": "t-1", "tags": ["x", "y"]},'
    b' "x_vendor_flag": {"nested": [1e3, -0.0, 12345678901234567890]}, "response_format": {"type": "text"}}'
)


async def test_request_body_is_forwarded_byte_for_byte_with_only_model_replaced(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    async with Router(tiered_policy(a, models={"a": "upstream-model"})) as router:
        await router.chat(RAW_BODY)
    assert a.count == 1
    expected = RAW_BODY.replace(b'"model": "chat"', b'"model": "upstream-model"')
    assert a.hits[0].body == expected


async def test_aimo_model_id_with_colon_is_forwarded_unsplit(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    async with Router(tiered_policy(a, models={"a": AIMO_MODEL})) as router:
        result = await router.chat(body())
    assert a.hits[0].json["model"] == AIMO_MODEL  # type: ignore[index]
    assert result.model == AIMO_MODEL
    assert result.data["model"] == AIMO_MODEL


async def test_glob_route_forwards_the_requested_model_id_unsplit(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    routes = {"*:deepseek-chat-v3": {"targets": [{"provider": "a", "model": "{model}"}]}}
    async with Router(make_policy({"a": provider_entry(a)}, routes)) as router:
        result = await router.chat(body(model=AIMO_MODEL))
    assert a.hits[0].json["model"] == AIMO_MODEL  # type: ignore[index]
    assert result.route == "*:deepseek-chat-v3"


async def test_given_request_id_is_forwarded_upstream(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.server_error(502))
    async with Router(tiered_policy(a, b)) as router:
        result = await router.chat(body(), request_id="req-42.abc")
    assert result.request_id == "req-42.abc"
    assert [hit.request_id for hit in a.hits] == ["req-42.abc", "req-42.abc"]  # every attempt carries it


async def test_generated_request_id_is_forwarded_upstream(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    async with Router(tiered_policy(a)) as router:
        first = await router.chat(body())
        second = await router.chat(body())
    assert first.request_id and second.request_id and first.request_id != second.request_id
    assert [hit.request_id for hit in a.hits] == [first.request_id, second.request_id]


async def test_stream_request_id_is_forwarded_upstream(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    async with Router(tiered_policy(a)) as router, router.stream(stream_body(), request_id="stream-7") as stream:
        async for _event in stream:
            pass
    assert a.hits[0].request_id == "stream-7"
    assert a.hits[0].headers_ci.get("Accept") == "text/event-stream"


async def test_provider_key_from_api_key_env_is_sent_as_bearer(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a", api_key="secret-a")
    b = await fake_provider("b")
    policy = tiered_policy(a, b, providers={"a": {"api_key_env": "A_KEY"}}, env={"A_KEY": "secret-a"})
    async with Router(policy) as router:
        result = await router.chat(body())
        a.down = True  # force the next request to b
        await router.chat(body())
    assert result.provider == "a"
    assert a.hits[0].status == 200
    assert a.hits[0].headers_ci.getall("Authorization") == ["Bearer secret-a"]
    # A provider without api_key_env gets no Authorization at all (never a client's, never another's).
    assert b.count >= 1 and all("Authorization" not in hit.headers_ci for hit in b.hits)


async def test_asi1_extra_response_fields_are_returned_byte_for_byte(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    raw = (b'{"id":"id-1","object":"chat.completion","created":1700000000,"model":"asi1-mini",'
           b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hi \xe2\x9c\x93"},'
           b'"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7},'
           b'  "thought": ["The user greets.", "Answer \\u00e9 briefly."], "executable_data": [],'
           b' "conversation_id": null, "tool_thought": [{"step": 1, "score": 0.50}]}')
    a.set_default(Status(200, body=raw, label="asi1"))
    async with Router(tiered_policy(a, models={"a": "asi1-mini"})) as router:
        result = await router.chat(body())
    assert result.body == raw
    assert result.data["thought"] == ["The user greets.", "Answer \u00e9 briefly."]
    assert result.data["conversation_id"] is None
    assert result.data["tool_thought"] == [{"step": 1, "score": 0.5}]
    assert result.text == "Hi \u2713"


async def test_asi1_extra_fields_in_the_first_stream_chunk_reach_the_caller_unchanged(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    extra = {"thought": ["Thinking."], "executable_data": [], "conversation_id": "c-1", "tool_thought": []}
    a.set_default(Stream(content="Hi there", extra=extra))
    async with Router(tiered_policy(a)) as router, router.stream(stream_body()) as stream:
        events = [event async for event in stream]
    first = json.loads(events[0].data)
    assert {key: first[key] for key in extra} == extra
    assert events[0].raw == b"data: " + events[0].data.encode() + b"\n\n"


async def test_ok_answer_body_is_the_providers_bytes(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Ok(content="plain answer"))
    async with Router(tiered_policy(a)) as router:
        result = await router.chat(body())
    # The fake sends compact JSON; anything re-encoded by the router would differ.
    assert result.body == json.dumps(result.data, ensure_ascii=False, separators=(",", ":")).encode()
    assert result.text == "plain answer"
