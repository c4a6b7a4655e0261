"""Soak under mixed faults: every request ends in exactly one outcome, and the daemon's books agree.

Three fake providers inject every fault kind they support at 1-5% each (tests/support/soak_env.FAULT_MIX)
and restart now and then (refusing connections meanwhile); 2% of the clients walk away at a
random moment; half the requests stream. Answers are identifiable per request, so a duplicated,
interleaved or truncated answer cannot pass as a success.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scenarios import MAX_ATTEMPTS, run_soak
from tests.support.soak_env import FAULT_MIX

REQUESTS = 20_000


@pytest.mark.slow
# The daemon under test is a subprocess (its sockets and fds are checked through /proc in test_leaks.py).
# In this process, the fake providers restart at random mid-connection, and aiohttp's server can leave
# a transport of a killed connection to the garbage collector (seen in 1 of ~6 runs, fds of the fakes,
# never of the daemon): that ResourceWarning says nothing about the router.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.slow
async def test_twenty_thousand_requests_under_mixed_faults_each_end_in_exactly_one_outcome(tmp_path: Path) -> None:
    report = await run_soak(requests=REQUESTS, workdir=tmp_path, concurrency=128, max_duration_s=150)
    print(report.summary())

    # Every fault kind was injected, connections were refused, clients walked away.
    assert set(FAULT_MIX) <= set(report.faults_drawn), report.faults_drawn
    assert report.attempts_by_outcome.get("connect_error", 0) > 0, report.attempts_by_outcome
    assert report.disconnects >= REQUESTS // 100

    # Exactly one outcome per request: a complete answer, a clean error, or the client's cancellation.
    # An anomaly (foreign, repeated or truncated content, [DONE] on a truncated stream, a stream
    # without an end, a dropped connection, no answer at all) names what went wrong.
    assert report.requests == REQUESTS
    assert report.outcomes.get("anomaly", 0) == 0, report.details.get("anomaly")
    assert sum(report.outcomes[o] for o in ("complete", "error", "cancelled")) == REQUESTS

    # The daemon's books: one access line and one count in /metrics per request that reached it;
    # only requests the client abandoned within moments may not have reached it, and those reached no
    # provider either.
    assert report.mismatches == []
    assert report.never_reached_with_hits == []
    reached = REQUESTS - len(report.never_reached)
    assert report.access_lines == reached
    assert report.daemon_requests == reached
    assert report.histogram_count == reached
    assert report.metrics_by_outcome == report.access_by_outcome
    assert report.in_flight_after == 0
    assert report.daemon_errors == []

    # Upstream attempts: never more than max_attempts for one request, within the retry budget's bound
    # overall, and every attempt a provider saw is one the daemon counted.
    assert report.max_header_attempts <= MAX_ATTEMPTS
    assert report.attempts_per_request <= report.budget_bound
    # Every request a provider saw was counted: as an attempt, or as a resend on a fresh connection within one.
    assert report.fake_hits <= report.attempts + report.resends
    # Attempts a provider may never have seen: refused connects, attempts cancelled with their client, and
    # first-byte timeouts (on a loaded machine the fake's loop may not have read the request yet).
    unseen = sum(report.attempts_by_outcome.get(outcome, 0)
                 for outcome in ("connect_error", "cancelled", "first_byte_timeout"))
    assert report.attempts - report.fake_hits <= unseen

    # A client that walks away: every upstream attempt of its request open then, or opened by a daemon that
    # had not read the close yet, is closed within 1 s. At this load the daemon reads its sockets late
    # (it starts first attempts of requests whose client had already left up to ~0.2 s after), so a retry
    # or failover may start after a client left within that lag, or before the daemon was done with that
    # very request (its access line's time, plus the fake providers' own loop lag to see the attempt).
    # Comparing with the worst read lag alone failed once in CI: 215.6 ms against 204.8 ms.
    # test_deadlines_and_disconnects.py checks, at a load that leaves both sides no lag, that none
    # starts after 10 ms.
    assert report.unclosed == []
    assert max(report.close_delays, default=0.0) < 1.0
    assert report.late_unexplained == []
