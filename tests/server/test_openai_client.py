"""The official `openai` SDK pointed at the daemon: answers, streams, tool calls and its error types."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI

from router.mock import Hang, Ok, Status
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_no_leak
from tests.support.daemon import InProcessDaemon
from tests.support.policies import CLIENT_ENV, CLIENT_KEY, make_policy, provider_block, route_block, simple_policy

MESSAGES = [{"role": "user", "content": "What is machine learning?"}]
TOOLS = [{"type": "function", "function": {
    "name": "search_docs", "description": "Search the docs",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


@pytest.fixture
async def sdk() -> AsyncIterator[list[AsyncOpenAI]]:
    clients: list[AsyncOpenAI] = []
    yield clients
    for client in clients:
        await client.close()


def client_for(clients: list[AsyncOpenAI], daemon: InProcessDaemon, key: str = "unused-in-open-mode") -> AsyncOpenAI:
    client = AsyncOpenAI(base_url=daemon.v1, api_key=key, max_retries=0, timeout=15)
    clients.append(client)
    return client


def error_dict(exc: openai.APIStatusError) -> dict:
    body = json.loads(exc.response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert_no_leak(exc.response.content)
    return body["error"]


async def test_sdk_non_streaming_chat_returns_the_providers_completion(daemon: DaemonFactory, fake_provider,
                                                                       sdk) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Ok(content="Machine learning is..."))
    server = await daemon(simple_policy(aimo))

    reply = await client_for(sdk, server).chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=300)
    completion = reply.parse()

    assert completion.choices[0].message.content == "Machine learning is..."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "aimo-model"  # the model that actually answered
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert reply.headers["x-router-provider"] == "aimo"
    assert reply.headers["x-router-attempts"] == "1"
    assert json.loads(aimo.hits[0].body)["max_tokens"] == 300


async def test_sdk_streaming_chat_joins_to_the_full_content_and_ends_normally(daemon: DaemonFactory,
                                                                              fake_provider, sdk) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Ok(content="Blockchain is a shared ledger.", chunks=6))
    server = await daemon(simple_policy(aimo))

    stream = await client_for(sdk, server).chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    pieces: list[str] = []
    finish_reasons: list[str] = []
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)

    assert "".join(pieces) == "Blockchain is a shared ledger."
    assert len(pieces) == 6  # relayed chunk by chunk, not merged
    assert finish_reasons == ["stop"]
    assert aimo.hits[0].json["stream"] is True


async def test_sdk_stream_with_include_usage_gets_a_final_usage_chunk(daemon: DaemonFactory, fake_provider,
                                                                      sdk) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Ok(content="counted", chunks=2))
    server = await daemon(simple_policy(aimo))

    stream = await client_for(sdk, server).chat.completions.create(
        model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]

    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert aimo.hits[0].json["stream_options"] == {"include_usage": True}


async def test_sdk_many_concurrent_calls_and_streams_all_succeed(daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo, asi1 = await fake_provider("aimo"), await fake_provider("asi1")
    aimo.set_default(Ok(content="ok", delay_s=0.05))
    asi1.set_default(Ok(content="ok", delay_s=0.05))
    server = await daemon(simple_policy(aimo, asi1))
    client = client_for(sdk, server)

    async def one_call() -> str:
        completion = await client.chat.completions.create(model="chat", messages=MESSAGES)
        return completion.choices[0].message.content

    async def one_stream() -> str:
        stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    results = await asyncio.gather(*[one_call() for _ in range(60)], *[one_stream() for _ in range(20)])

    assert results == ["ok"] * 80
    assert aimo.count == 80 and asi1.count == 0  # all on the preferred tier, none lost or retried


async def test_sdk_parses_tool_calls_relayed_from_the_provider(daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Ok(content="TOOL"))
    server = await daemon(simple_policy(aimo))

    completion = await client_for(sdk, server).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "find retries"}], tools=TOOLS, tool_choice="auto")

    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.function.name == "search_docs"
    assert json.loads(call.function.arguments)["query"] == "find retries"
    forwarded = aimo.hits[0].json
    assert forwarded["tools"] == TOOLS and forwarded["tool_choice"] == "auto"


async def test_sdk_streamed_tool_call_arguments_reassemble(daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Ok(content="TOOL", chunks=4))
    server = await daemon(simple_policy(aimo))

    stream = await client_for(sdk, server).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "stream me"}], tools=TOOLS, stream=True)
    names, arguments = [], []
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                if call.function and call.function.name:
                    names.append(call.function.name)
                if call.function and call.function.arguments:
                    arguments.append(call.function.arguments)

    assert names == ["search_docs"]
    assert json.loads("".join(arguments)) == {"query": "stream me", "limit": 3}


def keyed_policy(fake, **client_fields):
    client = {"name": "web", "key_env": CLIENT_ENV, **client_fields}
    return make_policy({fake.name: provider_block(fake)}, {"chat": route_block((fake.name, "m"))},
                       clients=[client])


async def test_sdk_raises_authentication_error_for_a_bad_key(daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(keyed_policy(aimo))

    with pytest.raises(openai.AuthenticationError) as caught:
        await client_for(sdk, server, key="not-the-key").chat.completions.create(model="chat", messages=MESSAGES)

    assert caught.value.status_code == 401
    assert error_dict(caught.value)["code"] == "invalid_api_key"
    assert aimo.count == 0
    ok = await client_for(sdk, server, key=CLIENT_KEY).chat.completions.create(model="chat", messages=MESSAGES)
    assert ok.choices[0].message.content == "Hello from aimo"


async def test_sdk_raises_not_found_for_an_unknown_route(daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(simple_policy(aimo))

    with pytest.raises(openai.NotFoundError) as caught:
        await client_for(sdk, server).chat.completions.create(model="no-such-route", messages=MESSAGES)

    assert caught.value.status_code == 404
    error = error_dict(caught.value)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "no-such-route" in error["message"]
    assert aimo.count == 0


async def test_sdk_raises_rate_limit_error_with_retry_after_for_a_client_over_its_rate(
        daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(keyed_policy(aimo, limits={"requests_per_second": 0.5, "burst": 1}))
    client = client_for(sdk, server, key=CLIENT_KEY)

    await client.chat.completions.create(model="chat", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="chat", messages=MESSAGES)

    assert caught.value.status_code == 429
    retry_after = int(caught.value.response.headers["Retry-After"])
    assert 1 <= retry_after <= 2  # 0.5 req/s: the next token is at most 2 s away
    error = error_dict(caught.value)
    assert error["type"] == "rate_limit_error" and "web" in error["message"]
    assert aimo.count == 1  # the refused request never reached a provider


async def test_sdk_sees_503_when_the_retry_budget_is_exhausted(daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Status.server_error(500))
    server = await daemon(simple_policy(aimo, retry_budget={"percent": 0, "min_per_second": 0}))

    with pytest.raises(openai.InternalServerError) as caught:
        await client_for(sdk, server).chat.completions.create(model="chat", messages=MESSAGES)

    assert caught.value.status_code == 503
    error = error_dict(caught.value)
    assert error["code"] == "no_target_available"
    assert "retry budget" in error["message"]
    assert caught.value.response.headers["x-router-attempts"] == "1"
    assert aimo.count == 1  # no retry without budget


async def test_sdk_sees_502_when_every_provider_fails(daemon: DaemonFactory, fake_provider, sdk) -> None:
    aimo, asi1 = await fake_provider("aimo"), await fake_provider("asi1")
    aimo.set_default(Status.server_error(500))
    asi1.set_default(Status.server_error(502))
    server = await daemon(simple_policy(aimo, asi1, retry={"max_attempts": 2, "max_attempts_per_target": 1}))

    with pytest.raises(openai.InternalServerError) as caught:
        await client_for(sdk, server).chat.completions.create(model="chat", messages=MESSAGES)

    assert caught.value.status_code == 502
    error = error_dict(caught.value)
    assert error["type"] == "upstream_error"
    assert "all 2 upstream attempts failed" in error["message"] and "asi1" in error["message"]
    assert caught.value.response.headers["x-router-attempts"] == "2"
    assert (aimo.count, asi1.count) == (1, 1)


@pytest.mark.slow
async def test_sdk_sees_504_when_the_deadline_passes_on_a_hanging_provider(daemon: DaemonFactory, fake_provider,
                                                                           sdk) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Hang())
    server = await daemon(simple_policy(aimo, route_fields={"deadline_s": 0.5}))

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        await client_for(sdk, server).chat.completions.create(model="chat", messages=MESSAGES)

    assert caught.value.status_code == 504
    assert time.monotonic() - started < 2.0
    assert "no provider answered in time" in error_dict(caught.value)["message"]
    await aimo.wait_until(lambda: aimo.hits[0].ended is not None, within_s=1.0)
    assert aimo.hits[0].disconnected  # the router gave up on the upstream request too
