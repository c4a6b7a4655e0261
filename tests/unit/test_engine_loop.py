"""The engine's retry/failover loop, driven through `Router.chat` with a scripted transport.

No network and no real sleeping: the injected `sleep` records each delay and moves
a FakeClock forward, and the seeded random source makes every backoff predictable.
"""

from __future__ import annotations

import json

import pytest

from router import NoTargetAvailable, RateLimited, UpstreamError
from router.observe.observer import NullObserver
from router.policy.model import BreakerPolicy, RetryBudget, RetryPolicy, Target
from router.upstream.errors import ConnectFailed, FirstByteTimeout
from tests.support.memory import REQUEST, Harness, MemoryReply, ScriptedTransport, backoffs, harness
from tests.support.memory import completion_reply as ok
from tests.support.memory import error_reply as error

A = Target("a", "model-a", priority=0)
B = Target("b", "model-b", priority=1)
C = Target("c", "model-c", priority=2)


# --- success and same-target retries ----------------------------------------------------------

async def test_success_on_the_first_attempt_never_sleeps() -> None:
    h = harness([A, B], ScriptedTransport(a=[ok("model-a")]))
    result = await h.chat()
    assert result.provider == "a" and result.model == "model-a" and result.attempts == 1
    assert h.sleep.delays == []


async def test_upstream_body_carries_the_target_model_and_request_id() -> None:
    h = harness([A], ScriptedTransport(a=[ok()]))
    await h.router.chat(REQUEST, request_id="req-42")
    sent = h.transport.sent[0]
    assert json.loads(sent.body) == {**REQUEST, "model": "model-a"}
    assert sent.request_id == "req-42"
    assert sent.stream is False
    assert sent.deadline == pytest.approx(1000.0 + 60.0)


async def test_server_error_is_retried_on_the_same_target_after_jittered_backoff() -> None:
    h = harness([A, B], ScriptedTransport(a=[error(500), ok()]))
    result = await h.chat()
    assert result.provider == "a" and result.attempts == 2
    assert h.sleep.delays == pytest.approx(backoffs(0.25))
    assert 0.0 < h.sleep.delays[0] <= 0.25


async def test_backoff_ceiling_doubles_on_each_retry_of_the_same_target() -> None:
    retry = RetryPolicy(max_attempts=4, max_attempts_per_target=3, base_interval_s=1.0)
    h = harness([A], ScriptedTransport(a=[error(502), error(503), ok()]), retry=retry)
    await h.chat()
    assert h.sleep.delays == pytest.approx(backoffs(1.0, 2.0))


async def test_connection_refused_is_retried_on_the_same_target() -> None:
    h = harness([A, B], ScriptedTransport(a=[ConnectFailed("refused"), ok()]))
    result = await h.chat()
    assert result.provider == "a"
    assert h.sleep.delays == pytest.approx(backoffs(0.25))


# --- failover ----------------------------------------------------------------------------------

async def test_failover_after_the_per_target_cap_is_immediate() -> None:
    h = harness([A, B], ScriptedTransport(a=[error(500), error(500)], b=[ok()]))
    result = await h.chat()
    assert h.transport.providers == ["a", "a", "b"]
    assert result.provider == "b" and result.attempts == 3
    assert h.sleep.delays == pytest.approx([*backoffs(0.25), 0.0])


async def test_silent_provider_is_not_retried_and_failover_is_immediate() -> None:
    h = harness([A, B], ScriptedTransport(a=[FirstByteTimeout("silent")], b=[ok()]))
    result = await h.chat()
    assert h.transport.providers == ["a", "b"]
    assert result.provider == "b"
    assert h.sleep.delays == [0.0]


async def test_context_length_skips_every_target_with_the_same_model() -> None:
    same_model = Target("b", "model-a", priority=1)
    transport = ScriptedTransport(a=[error(400, "too long", code="context_length_exceeded")], c=[ok()])
    h = harness([A, same_model, C], transport)
    result = await h.chat()
    assert h.transport.providers == ["a", "c"]
    assert json.loads(h.transport.sent[1].body)["model"] == "model-c"
    assert result.provider == "c"


async def test_context_length_everywhere_answers_400() -> None:
    transport = ScriptedTransport(a=[error(400, "too long", code="context_length_exceeded")],
                                  b=[error(400, "maximum context length is 8k")])
    h = harness([A, B], transport)
    with pytest.raises(UpstreamError) as info:
        await h.chat()
    assert info.value.status == 400
    assert info.value.reason == "context_length_exceeded"


async def test_bad_provider_key_fails_over_and_keeps_that_provider_out() -> None:
    transport = ScriptedTransport(a=[error(401, "invalid key", code="invalid_api_key")], b=[ok(), ok()])
    h = harness([A, B], transport, breaker=BreakerPolicy(max_ejection_s=30.0))
    assert (await h.chat()).provider == "b"
    assert (await h.chat()).provider == "b"  # a is ejected for max_ejection_s
    assert h.transport.providers == ["a", "b", "b"]


async def test_ejected_provider_gets_a_probe_after_the_maximum_ejection() -> None:
    transport = ScriptedTransport(a=[error(403, "forbidden"), ok()], b=[ok()])
    h = harness([A, B], transport, breaker=BreakerPolicy(max_ejection_s=30.0))
    await h.chat()
    h.clock.advance(30.0)
    assert (await h.chat()).provider == "a"


# --- rate limits -------------------------------------------------------------------------------

async def test_wait_for_preferred_delay_equals_retry_after() -> None:
    # consecutive_failures=1: had the 429 counted as a failure, the breaker would send us to b.
    transport = ScriptedTransport(a=[error(429, headers={"Retry-After": "3"}), ok()])
    h = harness([A, B], transport, breaker=BreakerPolicy(consecutive_failures=1))
    result = await h.chat()
    assert result.provider == "a"
    assert h.sleep.delays == [3.0]
    assert h.clock.monotonic() == 1003.0


async def test_new_request_waits_for_a_preferred_provider_that_frees_up_soon() -> None:
    transport = ScriptedTransport(a=[error(429, headers={"Retry-After": "30"}), ok()], b=[ok()])
    h = harness([A, B], transport)
    assert (await h.chat()).provider == "b"
    h.clock.advance(27.0)
    assert (await h.chat()).provider == "a"
    assert h.sleep.delays == pytest.approx([0.0, 3.0])


async def test_long_retry_after_fails_over_at_once() -> None:
    transport = ScriptedTransport(a=[error(429, headers={"Retry-After": "30"})], b=[ok()])
    h = harness([A, B], transport)
    assert (await h.chat()).provider == "b"
    assert h.sleep.delays == [0.0]


async def test_429_without_retry_after_waits_at_least_the_base_interval() -> None:
    transport = ScriptedTransport(a=[error(429), ok()])
    h = harness([A, B], transport, retry=RetryPolicy(base_interval_s=0.5))
    assert (await h.chat()).provider == "a"
    assert len(h.sleep.delays) == 1
    assert 0.5 <= h.sleep.delays[0] <= 0.5 * 1.000001


async def test_every_provider_throttled_answers_429_with_retry_after() -> None:
    transport = ScriptedTransport(a=[error(429, headers={"Retry-After": "30"})])
    h = harness([A], transport)
    with pytest.raises(RateLimited) as info:
        await h.chat()
    assert info.value.scope == "providers"
    assert info.value.retry_after == pytest.approx(30.0)
    assert info.value.status == 429


async def test_new_requests_do_not_hammer_a_throttled_provider() -> None:
    transport = ScriptedTransport(a=[error(429, headers={"Retry-After": "30"})])
    h = harness([A], transport)
    with pytest.raises(RateLimited):
        await h.chat()
    h.clock.advance(10)
    with pytest.raises(RateLimited) as info:
        await h.chat()
    assert info.value.retry_after == pytest.approx(20.0)
    assert len(h.transport.sent) == 1


async def test_provider_that_keeps_answering_429_ends_in_429_not_502() -> None:
    # Default retry policy: the single target gets its 2 tries (waiting out Retry-After between them);
    # the route has no other target, so the client must be told to back off, not that we failed.
    throttled = [error(429, headers={"Retry-After": "1"}), error(429, headers={"Retry-After": "1"})]
    h = harness([A], ScriptedTransport(a=throttled))
    with pytest.raises(RateLimited) as info:
        await h.chat()
    assert info.value.scope == "providers"
    assert info.value.retry_after == pytest.approx(1.0)


async def test_no_wait_for_a_throttled_target_whose_breaker_stays_open_longer() -> None:
    transport = ScriptedTransport(a=[error(503, headers={"Retry-After": "3"})], b=[ok()])
    h = harness([A, B], transport, breaker=BreakerPolicy(consecutive_failures=1, base_ejection_s=10))
    assert (await h.chat()).provider == "b"
    assert h.sleep.delays == [0.0]


async def test_wait_for_preferred_zero_fails_over_at_once() -> None:
    transport = ScriptedTransport(a=[error(429, headers={"Retry-After": "1"})], b=[ok()])
    h = harness([A, B], transport, retry=RetryPolicy(wait_for_preferred_s=0.0))
    assert (await h.chat()).provider == "b"
    assert h.sleep.delays == [0.0]


# --- fatal answers and final statuses ----------------------------------------------------------

async def test_content_policy_is_fatal_and_passed_through() -> None:
    message = "Your request was rejected by the safety system."
    transport = ScriptedTransport(a=[error(400, message, code="content_policy_violation")], b=[ok()])
    h = harness([A, B], transport)
    with pytest.raises(UpstreamError) as info:
        await h.chat()
    assert info.value.status == 400
    assert info.value.message == message
    assert info.value.code == "content_policy_violation"
    assert info.value.attempts == 1
    assert json.loads(info.value.body)["error"]["message"] == message
    assert h.transport.providers == ["a"]
    assert h.sleep.delays == []


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_request_errors_stop_at_once(status: int) -> None:
    transport = ScriptedTransport(a=[error(status, "bad parameter")], b=[ok()])
    h = harness([A, B], transport)
    with pytest.raises(UpstreamError) as info:
        await h.chat()
    assert info.value.status == status
    assert info.value.reason == "bad_request"
    assert h.transport.providers == ["a"]


async def test_server_errors_everywhere_answer_502() -> None:
    transport = ScriptedTransport(a=[error(500), error(503)], b=[error(502)])
    h = harness([A, B], transport, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(UpstreamError) as info:
        await h.chat()
    assert info.value.status == 502
    assert info.value.attempts == 3
    assert info.value.reason == "server_error"
    assert "b" in info.value.message and "502" in info.value.message


async def test_max_attempts_bounds_the_request() -> None:
    transport = ScriptedTransport(a=[error(500), error(500)], b=[error(500), error(500)], c=[ok()])
    h = harness([A, B, C], transport, retry=RetryPolicy(max_attempts=2))
    with pytest.raises(UpstreamError) as info:
        await h.chat()
    assert info.value.attempts == 2
    assert h.transport.providers == ["a", "a"]


async def test_timeouts_everywhere_answer_504() -> None:
    transport = ScriptedTransport(a=[FirstByteTimeout("silent")], b=[FirstByteTimeout("silent")])
    h = harness([A, B], transport)
    with pytest.raises(UpstreamError) as info:
        await h.chat()
    assert info.value.status == 504
    assert info.value.reason == "first_byte_timeout"


async def test_deadline_timeout_is_final_and_answers_504() -> None:
    h: Harness

    def hang_until_deadline() -> MemoryReply:
        h.clock.advance(10.0)
        raise FirstByteTimeout("deadline", deadline_bound=True)

    transport = ScriptedTransport(a=[hang_until_deadline], b=[ok()])
    h = harness([A, B], transport, deadline_s=10.0)
    with pytest.raises(UpstreamError) as info:
        await h.chat()
    assert info.value.status == 504
    assert info.value.reason == "deadline_exceeded"
    assert h.transport.providers == ["a"]


async def test_backoff_is_skipped_when_the_deadline_leaves_no_time() -> None:
    h: Harness

    def slow_failure() -> MemoryReply:
        h.clock.advance(0.99)  # the 500 arrives 10 ms before the deadline
        return error(500)

    transport = ScriptedTransport(a=[slow_failure], b=[ok()])
    h = harness([A, B], transport, deadline_s=1.0, retry=RetryPolicy(base_interval_s=0.5))
    assert (await h.chat()).provider == "b"
    assert h.sleep.delays == [0.0]


# --- retry budget ------------------------------------------------------------------------------

async def test_exhausted_retry_budget_answers_no_target_with_retry_after() -> None:
    transport = ScriptedTransport(a=[error(500)], b=[ok()])
    h = harness([A, B], transport, budget=RetryBudget(percent=0, min_per_second=0))
    with pytest.raises(NoTargetAvailable) as info:
        await h.chat()
    assert info.value.retry_after == 1.0
    assert info.value.attempts == 1
    assert info.value.status == 503
    assert h.transport.providers == ["a"]
    assert h.sleep.delays == []


async def test_retry_budget_recovers_as_the_window_slides() -> None:
    transport = ScriptedTransport(a=[error(500), ok(), error(500), ok()])
    budget = RetryBudget(percent=0, min_per_second=0.1, window_s=10)  # one retry per 10 s
    h = harness([A], transport, budget=budget)
    assert (await h.chat()).attempts == 2
    h.clock.advance(1.0)
    transport.scripts["a"] = [error(500)]
    with pytest.raises(NoTargetAvailable):
        await h.chat()
    h.clock.advance(10.0)
    transport.scripts["a"] = [error(500), ok()]
    assert (await h.chat()).attempts == 2


# --- breakers ----------------------------------------------------------------------------------

async def test_open_breaker_sends_new_requests_to_the_next_tier() -> None:
    transport = ScriptedTransport(a=[error(500)], b=[ok()])
    retry = RetryPolicy(max_attempts_per_target=1)
    h = harness([A, B], transport, retry=retry, breaker=BreakerPolicy(consecutive_failures=1))
    assert (await h.chat()).provider == "b"
    transport.scripts["b"] = [ok()]
    assert (await h.chat()).provider == "b"
    assert h.transport.providers == ["a", "b", "b"]


async def test_route_with_every_breaker_open_still_tries_a_target() -> None:
    transport = ScriptedTransport(a=[error(500), ok()])
    retry = RetryPolicy(max_attempts_per_target=1)
    h = harness([A], transport, retry=retry, breaker=BreakerPolicy(consecutive_failures=1))
    with pytest.raises(NoTargetAvailable) as caught:  # its only target is ejected now: the route is down
        await h.chat()
    assert caught.value.status == 503 and caught.value.retry_after == pytest.approx(5.0)
    assert (await h.chat()).provider == "a"  # forced through the open breaker


async def test_same_target_retry_backs_off_even_when_its_breaker_just_opened() -> None:
    transport = ScriptedTransport(a=[error(500), ok()])
    h = harness([A], transport, breaker=BreakerPolicy(consecutive_failures=1))
    assert (await h.chat()).provider == "a"
    assert h.sleep.delays == pytest.approx(backoffs(0.25))


# --- what the engine reports -------------------------------------------------------------------

class RecordingObserver(NullObserver):
    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def retried(self, route: str, reason: str) -> None:
        self.events.append(("retried", route, reason))

    def failed_over(self, route: str, from_provider: str, to_provider: str) -> None:
        self.events.append(("failed_over", route, from_provider, to_provider))

    def retry_budget_exhausted(self, route: str) -> None:
        self.events.append(("budget_exhausted", route))

    def attempt_finished(self, route: str, provider: str, outcome: str, duration_s: float,
                         ttfb_s: float | None) -> None:
        self.events.append(("attempt", provider, outcome))


async def test_retries_and_failovers_are_reported_with_their_reasons() -> None:
    observer = RecordingObserver()
    transport = ScriptedTransport(a=[error(500), ConnectFailed("refused")], b=[ok()])
    h = harness([A, B], transport, observer=observer)
    await h.chat()
    assert observer.events == [
        ("attempt", "a", "server_error"),
        ("retried", "chat", "server_error"),
        ("attempt", "a", "connect_error"),
        ("retried", "chat", "connect_error"),
        ("failed_over", "chat", "a", "b"),
        ("attempt", "b", "ok"),
    ]


async def test_exhausted_budget_is_reported() -> None:
    observer = RecordingObserver()
    transport = ScriptedTransport(a=[error(500)])
    h = harness([A], transport, observer=observer, budget=RetryBudget(percent=0, min_per_second=0))
    with pytest.raises(NoTargetAvailable):
        await h.chat()
    assert ("budget_exhausted", "chat") in observer.events
    assert not any(e[0] == "retried" for e in observer.events)
