"""What a simulated provider decides for each attempt: outages, its limit window, error shares, stalls."""

from __future__ import annotations

import json

import pytest

from router.sim.profile import ProviderFaults, parse_profile
from router.sim.provider import ANSWER, REFUSED, SILENT, STATUS, ProviderModel
from router.upstream.sse import SseParser


def model(yaml: str, *, seed: int = 1) -> ProviderModel:
    profile = parse_profile(f"duration_s: 600\nrate_per_s: 1\nproviders:\n  p: {yaml}\n")
    return ProviderModel("p", profile.providers["p"], seed=seed)


def test_outages_decide_by_their_kind_for_their_time_only() -> None:
    p = model("{latency_s: {p50: 0.1, p99: 0.1}, outages: [{start_s: 10, end_s: 20, kind: refused}, "
              "{start_s: 20, end_s: 30, kind: silent}, {start_s: 40, end_s: 50, kind: 503}]}")
    seen = {t: p.decide(t, stream=False) for t in (0.0, 10.0, 19.9, 20.0, 29.9, 30.0, 45.0, 50.0)}
    assert [d.kind for d in seen.values()] == [ANSWER, REFUSED, REFUSED, SILENT, SILENT, ANSWER, STATUS, ANSWER]
    assert seen[45.0].status == 503 and seen[45.0].delay_s == pytest.approx(0.1)  # an answer: after the latency
    assert [p.healthy(t) for t in (9.0, 10.0, 35.0, 40.0, 55.0)] == [True, False, True, False, True]
    assert p.counts == {"ok": 3, "outage_refused": 2, "outage_silent": 2, "outage_503": 1}


def test_the_limit_is_a_sliding_minute_and_retry_after_says_when_a_slot_frees() -> None:
    p = model("{limit_per_min: 3}")
    assert [p.decide(t, stream=False).kind for t in (0.0, 10.0, 20.0)] == [ANSWER] * 3
    limited = p.decide(30.0, stream=False)
    assert (limited.kind, limited.status, limited.retry_after, limited.label) == (STATUS, 429, 30, "limit_429")
    assert p.decide(59.5, stream=False).retry_after == 1  # at least one second
    assert p.decide(60.0, stream=False).kind == ANSWER  # the attempt at 0 s left the window
    assert p.decide(65.0, stream=False).retry_after == 5  # the one at 10 s leaves at 70 s


def test_refused_and_limited_attempts_do_not_take_a_slot_of_the_window() -> None:
    p = model("{limit_per_min: 1, outages: [{start_s: 0, end_s: 5, kind: refused}]}")
    assert p.decide(1.0, stream=False).kind == REFUSED
    assert p.decide(6.0, stream=False).kind == ANSWER
    assert p.decide(7.0, stream=False).retry_after == 59
    assert p.decide(66.0, stream=False).kind == ANSWER


def test_error_shares_are_shares_of_the_attempts() -> None:
    p = model("{errors: {503: 0.2, 429: 0.1}}")
    decisions = [p.decide(float(t), stream=False) for t in range(20_000)]
    shares = {status: sum(1 for d in decisions if d.status == status) / len(decisions) for status in (503, 429, 200)}
    assert shares[503] == pytest.approx(0.2, abs=0.01)
    assert shares[429] == pytest.approx(0.1, abs=0.01)
    assert shares[200] == pytest.approx(0.7, abs=0.01)
    assert {d.retry_after for d in decisions if d.status == 429} == {1}
    assert {d.retry_after for d in decisions if d.status == 503} == {None}


def test_only_streams_stall() -> None:
    p = model("{stall_percent: 50}")
    assert not any(p.decide(float(t), stream=False).stalled for t in range(200))
    stalls = sum(p.decide(float(t), stream=True).stalled for t in range(2000))
    assert 850 < stalls < 1150


def test_decisions_are_reproducible_and_each_provider_draws_on_its_own() -> None:
    faults = "{latency_s: {p50: 0.5, p99: 2}, errors: {503: 0.3}, stall_percent: 10}"

    def trace(m: ProviderModel) -> list[tuple[str, float, int, bool]]:
        return [(d.kind, d.delay_s, d.status, d.stalled) for d in (m.decide(t * 0.1, t % 2 == 0) for t in range(300))]

    assert trace(model(faults)) == trace(model(faults))
    assert trace(model(faults)) != trace(model(faults, seed=2))
    profile = parse_profile(f"duration_s: 1\nrate_per_s: 1\nproviders:\n  p: {faults}\n  q: {faults}\n")
    p, q = (ProviderModel(name, profile.providers[name], seed=1) for name in ("p", "q"))
    assert trace(p) != trace(q)


def test_a_provider_missing_from_the_profile_answers_at_once_and_never_fails() -> None:
    instant = ProviderModel("asi1", None, seed=1)
    decisions = [instant.decide(float(t), stream=t % 2 == 0) for t in range(100)]
    assert {(d.kind, d.delay_s, d.stalled) for d in decisions} == {(ANSWER, 0.0, False)}
    assert instant.instant and not ProviderModel("asi1", ProviderFaults(), seed=1).instant


def test_the_answers_are_a_complete_completion_and_a_complete_stream() -> None:
    answers = ProviderModel("asi1", None, seed=1).answers
    completion = json.loads(answers.json)
    assert completion["choices"][0]["message"]["content"] == "Hello from asi1."
    assert completion["choices"][0]["finish_reason"] == "stop"
    first = SseParser().feed(answers.stream_reads[0])
    assert len(first) == 1 and json.loads(first[0].data)["choices"][0]["delta"]["content"] == "Hello"
    events = SseParser().feed(b"".join(answers.stream_reads))
    assert events[-1].data == "[DONE]"
    text = "".join(json.loads(e.data)["choices"][0]["delta"].get("content", "")
                   for e in events[:-1] if json.loads(e.data)["choices"])
    assert text == "Hello from asi1."
    assert json.loads(answers.error(503))["error"]["message"] == "simulated 503"
