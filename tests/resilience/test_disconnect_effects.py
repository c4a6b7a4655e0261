"""How the soak judges attempts made after a client left: the daemon's read lag, or its own end of
the request, must explain every retry or failover that started after the client's close."""

from __future__ import annotations

import time

from multidict import CIMultiDict, CIMultiDictProxy

from router.mock import Hit
from tests.support.load import Result
from tests.support.scenarios import disconnect_effects, logged_ends


def _hit(started: float, ended: float) -> Hit:
    return Hit(started=started, headers={}, headers_ci=CIMultiDictProxy(CIMultiDict()), ended=ended)


def _gone(request_id: str, at: float) -> Result:
    return Result(0, request_id, stream=False, planned_disconnect=True, started=0.0, disconnected_at=at)


def test_a_first_attempt_read_after_the_close_sets_the_read_lag_that_explains_later_retries() -> None:
    results = [_gone("a", 10.0), _gone("b", 20.0)]
    watched = {"a": [_hit(10.2, 10.3)],  # the daemon read this request 200 ms after its client left
               "b": [_hit(19.9, 20.05), _hit(20.15, 20.2)]}  # a retry 150 ms after the close
    effects = disconnect_effects(results, watched)
    assert len(effects.first_after) == 1 and abs(effects.first_after[0] - 0.2) < 1e-9
    assert len(effects.late_attempts) == 1 and abs(effects.late_attempts[0] - 0.15) < 1e-9
    assert effects.close_delays and effects.unexplained == []


def test_a_retry_later_than_any_read_lag_is_explained_only_by_the_daemons_own_end_of_the_request() -> None:
    results = [_gone("a", 10.0), _gone("b", 20.0)]
    watched = {"a": [_hit(10.05, 10.1)], "b": [_hit(19.9, 20.05), _hit(20.2, 20.3)]}

    # No access lines: nothing explains a retry 200 ms after the close when the worst lag seen is 50 ms.
    unexplained = disconnect_effects(results, watched).unexplained
    assert len(unexplained) == 1 and unexplained[0].startswith("b: 200.0 ms after the client left")

    # The daemon finished "b" at 20.195: it had not read the close when it sent the retry.
    assert disconnect_effects(results, watched, {"b": 20.195}).unexplained == []
    # The daemon finished "b" at 20.1: the retry reached the provider 100 ms after that...
    assert len(disconnect_effects(results, watched, {"b": 20.1}).unexplained) == 1
    # ... which a provider whose loop ran up to 50 ms late may take to start a request sent just before.
    assert disconnect_effects(results, watched, {"b": 20.1}, provider_lag=0.05).unexplained == []


def test_logged_ends_moves_the_access_lines_wall_clock_onto_this_processs_monotonic_clock() -> None:
    wall, mono = time.time(), time.monotonic()
    ends = logged_ends([{"ts": round(wall - 1.0, 3), "request_id": "x"}, {"request_id": "no-ts"}])
    assert list(ends) == ["x"]
    assert abs(ends["x"] - (mono - 1.0)) < 0.01
