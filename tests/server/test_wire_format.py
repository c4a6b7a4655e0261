"""Raw HTTP built from the seed documents: what reaches the provider and what comes back, byte for byte."""

from __future__ import annotations

import json
import re

import aiohttp

from router.mock import Ok, Status
from tests.server.conftest import DaemonFactory
from tests.server.helpers import sse_data, sse_text
from tests.support.policies import AIMO_MODEL, CANARY_KEY, make_policy, provider_block, route_block, simple_policy

JSON = {"Content-Type": "application/json"}

# The AIMO "Basic request" example, as curl sends it (whitespace and field order preserved).
AIMO_BASIC_REQUEST = b"""{
    "model": "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3",
    "messages": [
      {"role": "user", "content": "Explain quantum computing in one paragraph."}
    ],
    "max_tokens": 250,
    "temperature": 0.7
  }"""

# The ASI1 example response, verbatim from the seed document (pretty-printed, ASI1's field order).
ASI1_RESPONSE = b"""{
  "model": "asi1-mini",
  "id": "id_kKg27rnGyfH4NknTL",
  "executable_data": [],
  "conversation_id": null,
  "thought": [
    "The user has initiated a simple greeting. This is a standard conversational start, and my response \
should be polite and professional, introducing myself as ASI1-Mini while highlighting my unique capabilities \
as an agentic, decentralised-focused model."
  ],
  "tool_thought": [],
  "choices": [
    {
      "index": 0,
      "finish_reason": "stop",
      "message": {
        "role": "assistant",
        "content": "Hello! I'm ASI1-Mini, an advanced agentic and decentralised-focused assistant powered by \
fetch.ai Inc. I'm designed to support complex workflows with executable expertise. How can I assist you today?"
      }
    }
  ],
  "usage": {
    "prompt_tokens": 39,
    "completion_tokens": 100,
    "total_tokens": 139
  }
}"""


def aimo_glob_policy(aimo):
    return make_policy({"aimo": provider_block(aimo)},
                       {"*:deepseek-chat-v3": route_block(("aimo", "{model}"))})


async def test_aimo_model_id_reaches_the_provider_unsplit_through_a_glob_route(
        daemon: DaemonFactory, fake_provider, http: aiohttp.ClientSession) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(aimo_glob_policy(aimo))

    async with http.post(server.chat_url, data=AIMO_BASIC_REQUEST, headers=JSON) as response:
        body = await response.json()

    assert response.status == 200
    assert aimo.count == 1
    assert aimo.hits[0].json["model"] == AIMO_MODEL  # not split on ':'
    assert aimo.hits[0].body == AIMO_BASIC_REQUEST  # the requested name is forwarded: nothing changes
    assert body["model"] == AIMO_MODEL
    assert response.headers["x-router-provider"] == "aimo"


async def test_aimo_streaming_example_relays_sse_ending_with_done(daemon: DaemonFactory, fake_provider,
                                                                  http: aiohttp.ClientSession) -> None:
    aimo = await fake_provider("aimo")
    aimo.set_default(Ok(content="Blockchain is a distributed ledger.", chunks=5))
    server = await daemon(aimo_glob_policy(aimo))
    request = {"model": AIMO_MODEL, "messages": [{"role": "user", "content": "Tell me about blockchain technology."}],
               "stream": True}

    async with http.post(server.chat_url, json=request) as response:
        raw = await response.read()

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_data(raw)
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    assert sse_text(payloads) == "Blockchain is a distributed ledger."
    assert all(json.loads(p)["model"] == AIMO_MODEL for p in payloads[:-1])


async def test_only_the_model_value_is_replaced_in_the_forwarded_body(daemon: DaemonFactory, fake_provider,
                                                                      http: aiohttp.ClientSession) -> None:
    asi1 = await fake_provider("asi1")
    server = await daemon(make_policy({"asi1": provider_block(asi1)}, {"chat": route_block(("asi1", "asi1-mini"))}))
    # metadata, vendor fields, odd spacing, escapes, number spellings and key order must all survive.
    sent = (b'{ "metadata" : {"trace": "a\\u00e9b", "tags": ["x", 1.50, 2E3], "nested": {"k": null}},\n'
            b'  "model":"chat" , "x_vendor_flag": true, "top_p": 1.0, "temperature": 0.70,\n'
            b'  "messages": [{"role": "user", "content": "caf\\u00e9 \\"quoted\\" \xc3\xa9"}],\n'
            b'  "response_format": {"type": "json_object"}, "stream": false, "zz_unknown": [[],{}]\t}')

    async with http.post(server.chat_url, data=sent, headers=JSON) as response:
        await response.read()

    assert response.status == 200
    assert asi1.hits[0].body == sent.replace(b'"model":"chat"', b'"model":"asi1-mini"')


async def test_client_request_id_is_echoed_and_forwarded_upstream(daemon: DaemonFactory, fake_provider,
                                                                  http: aiohttp.ClientSession) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(simple_policy(aimo))

    async with http.post(server.chat_url, data=AIMO_BASIC_REQUEST.replace(AIMO_MODEL.encode(), b"chat"),
                         headers={**JSON, "X-Request-ID": "trace-42.a:b_c"}) as response:
        await response.read()

    assert response.headers["x-request-id"] == "trace-42.a:b_c"
    assert aimo.hits[0].request_id == "trace-42.a:b_c"


async def test_a_request_id_is_generated_when_absent_and_forwarded(daemon: DaemonFactory, fake_provider,
                                                                   http: aiohttp.ClientSession) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(simple_policy(aimo))

    ids = []
    for headers in ({}, {"X-Request-ID": ""}):  # absent, then empty
        async with http.post(server.chat_url, json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                             headers=headers) as response:
            await response.read()
        ids.append(response.headers["x-request-id"])

    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids), ids
    assert ids[0] != ids[1]
    assert [hit.request_id for hit in aimo.hits] == ids


async def test_an_unsafe_request_id_is_replaced_not_forwarded(daemon: DaemonFactory, fake_provider,
                                                              http: aiohttp.ClientSession) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(simple_policy(aimo))
    unsafe = ["has spaces in it", "x" * 500, "semi;colon", "quote\"d", "tab\tbed", "<script>"]

    for value in unsafe:
        async with http.post(server.chat_url, json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                             headers={"X-Request-ID": value}) as response:
            await response.read()
        echoed = response.headers["x-request-id"]
        assert echoed != value and re.fullmatch(r"[0-9a-f]{32}", echoed), (value, echoed)
        assert aimo.hits[-1].request_id == echoed


async def test_request_id_is_echoed_on_errors_too(daemon: DaemonFactory, fake_provider,
                                                  http: aiohttp.ClientSession) -> None:
    aimo = await fake_provider("aimo")
    server = await daemon(simple_policy(aimo))

    async with http.post(server.chat_url, data=b"{not json", headers={"X-Request-ID": "bad-body-1"}) as response:
        await response.read()

    assert response.status == 400
    assert response.headers["x-request-id"] == "bad-body-1"


async def test_asi1_extra_response_fields_come_back_byte_for_byte(daemon: DaemonFactory, fake_provider,
                                                                  http: aiohttp.ClientSession) -> None:
    asi1 = await fake_provider("asi1")
    asi1.set_default(Status(200, body=ASI1_RESPONSE))  # the seed's sample answer, sent verbatim
    server = await daemon(make_policy({"asi1": provider_block(asi1)}, {"chat": route_block(("asi1", "asi1-mini"))}))
    asi1_request = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0.7,
                    "stream": False, "max_tokens": 1024}

    async with http.post(server.chat_url, json=asi1_request) as response:
        raw = await response.read()

    assert response.status == 200
    assert raw == ASI1_RESPONSE
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["x-router-provider"] == "asi1"


async def test_asi1_extra_fields_from_the_fake_survive_in_the_body(daemon: DaemonFactory, fake_provider,
                                                                   http: aiohttp.ClientSession) -> None:
    asi1 = await fake_provider("asi1")
    extra = {"thought": ["The user greets; answer politely."], "tool_thought": [],
             "executable_data": [{"type": "noop", "args": {"n": 1}}], "conversation_id": None}
    asi1.set_default(Ok(extra=extra, content="Hello! I'm ASI1-Mini"))
    server = await daemon(make_policy({"asi1": provider_block(asi1)}, {"chat": route_block(("asi1", "asi1-mini"))}))

    async with http.post(server.chat_url, json={"model": "chat", "messages": [{"role": "user", "content": "Hello"}]},
                         ) as response:
        raw = await response.read()

    data = json.loads(raw)
    assert {key: data[key] for key in extra} == extra
    # Relayed as the provider wrote it: compact JSON with the extras appended, not re-serialised.
    assert raw.endswith(json.dumps(extra, separators=(",", ":")).encode()[1:])
    assert data["model"] == "asi1-mini"


async def test_asi1_extra_fields_survive_in_the_first_stream_event(daemon: DaemonFactory, fake_provider,
                                                                   http: aiohttp.ClientSession) -> None:
    asi1 = await fake_provider("asi1")
    extra = {"thought": ["streaming thought"], "conversation_id": "conv-1", "executable_data": []}
    asi1.set_default(Ok(extra=extra, content="Hi there"))
    server = await daemon(make_policy({"asi1": provider_block(asi1)}, {"chat": route_block(("asi1", "asi1-mini"))}))

    async with http.post(server.chat_url, json={"model": "chat", "stream": True,
                                                "messages": [{"role": "user", "content": "Hello"}]}) as response:
        payloads = sse_data(await response.read())

    first = json.loads(payloads[0])
    assert {key: first[key] for key in extra} == extra
    assert sse_text(payloads) == "Hi there"


async def test_the_provider_receives_its_own_key_from_api_key_env(daemon: DaemonFactory, fake_provider,
                                                                  http: aiohttp.ClientSession) -> None:
    aimo = await fake_provider("aimo", api_key=CANARY_KEY)  # the fake answers 401 to any other key
    server = await daemon(simple_policy(aimo))

    async with http.post(server.chat_url, json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
                         ) as response:
        await response.read()

    assert response.status == 200
    assert aimo.hits[0].headers_ci["Authorization"] == f"Bearer {CANARY_KEY}"
