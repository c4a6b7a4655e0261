"""Stream relay fuzzing: a provider stream cut at any byte never reaches the client as a partial event.

The fake provider answers a well-formed stream (role chunk, content chunks, finish
chunk, `[DONE]`) truncated at a random byte, with a clean end of body. Whatever
the cut, the client gets either an OpenAI error JSON (nothing was committed) or a
stream whose every event is whole JSON (or `[DONE]`, last), whose content is a
prefix of what the provider sent, and which ends with `[DONE]` only when the
provider's answer was complete, else with the router's own error event.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from router.mock import FakeProvider, Status
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_openai_error, chat_body, sse_data, sse_text
from tests.support.daemon import InProcessDaemon
from tests.support.policies import simple_policy


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def provider_stream(pieces: list[str]) -> tuple[bytes, list[int]]:
    """The stream, and the offset where each event ends (role, pieces..., finish, [DONE])."""
    events = [chunk({"role": "assistant"}), *(chunk({"content": p}) for p in pieces), chunk({}, "stop"),
              b"data: [DONE]\n\n"]
    ends, total = [], 0
    for item in events:
        total += len(item)
        ends.append(total)
    return b"".join(events), ends


@pytest.fixture
async def relay(daemon: DaemonFactory, fake_provider) -> tuple[InProcessDaemon, FakeProvider]:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, retry={"max_attempts": 1, "max_attempts_per_target": 1}))
    return server, fake


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pieces=st.lists(st.text(max_size=12), min_size=1, max_size=5), data=st.data())
async def test_a_provider_stream_cut_anywhere_reaches_the_client_only_as_whole_events(
        relay: tuple[InProcessDaemon, FakeProvider], http, pieces: list[str], data: st.DataObject) -> None:
    server, fake = relay
    stream, ends = provider_stream(pieces)
    cut = data.draw(st.sampled_from(sorted({0, *ends, *(e - 1 for e in ends), *(e - 3 for e in ends)}))
                    | st.integers(0, len(stream)), label="cut")
    fake.script(Status(200, body=stream[:cut], headers={"Content-Type": "text/event-stream"}))

    async with http.post(server.chat_url, json=chat_body(stream=True)) as response:
        raw = await response.read()

    if cut < ends[0]:  # not even the first event: nothing was committed, failover or an error JSON
        event("cut before the first event")
        assert response.status == 502, raw
        assert_openai_error(raw)
        return
    assert response.status == 200
    payloads = sse_data(raw)
    assert payloads.count("[DONE]") <= 1
    decoded = [json.loads(p) for p in payloads if p != "[DONE]"]  # no partial JSON was relayed
    relayed_text = sse_text(payloads)
    assert "".join(pieces).startswith(relayed_text)
    finished = cut >= ends[-2]  # the finish chunk arrived whole: the answer is complete
    if finished:
        event("complete: ends with [DONE]")
        assert payloads[-1] == "[DONE]" and relayed_text == "".join(pieces)
    else:
        event("interrupted: ends with the router's error event")
        assert "[DONE]" not in payloads
        assert decoded[-1]["error"]["code"] == "stream_interrupted"
    assert all("error" not in c for c in decoded[:-1])
