"""The report's figures, on outcomes built by hand so that each one can be checked by hand."""

from __future__ import annotations

import math
from array import array
from collections import Counter

import pytest

from router.sim.driver import FAILED, Outcomes, Schedule
from router.sim.profile import parse_profile
from router.sim.report import build_report
from router.sim.text import render

PROFILE = parse_profile("duration_s: 20\nrate_per_s: 1\nproviders:\n  p:\n    outages: "
                        "[{start_s: 5, end_s: 10, kind: refused}]\n")


def outcomes() -> Outcomes:
    """20 requests, one a second. p serves all but: t=5..9 (its outage) go to q, and t=6, 7 fail;
    p is back at t=12; t=10, 11 still go to q."""
    served = [0] * 5 + [1, FAILED, FAILED, 1, 1] + [1, 1] + [0] * 8
    latency = [math.nan if s == FAILED else 0.5 + i / 100 for i, s in enumerate(served)]
    attempts = [1] * 5 + [2, 3, 3, 2, 2] + [1, 1] + [1] * 8
    return Outcomes(providers=("p", "q"), schedule=Schedule(array("d", [float(i) for i in range(20)]), bytearray(20)),
                    latency=array("d", latency), attempts=array("H", attempts), served=array("b", served),
                    failures=Counter({"no_target": 2}), provider_attempts={"p": 20, "q": 7},
                    decisions={"p": {"ok": 13, "outage_refused": 7}, "q": {"ok": 7}}, end_s=20.5)


def test_the_headline_figures() -> None:
    report = build_report(outcomes(), PROFILE, span_s=20.0, seed=1, windows=4)
    assert (report.requests, report.succeeded) == (20, 18)
    assert report.success_rate == 0.9
    assert report.attempts_per_request == pytest.approx(27 / 20) and report.max_attempts == 3
    assert report.upstream_attempts == 27 and report.load_multiplier == pytest.approx(27 / 20)
    served = sorted(0.5 + i / 100 for i in range(20) if i not in (6, 7))
    assert report.latency_s == {"p50": served[8], "p90": served[16], "p99": served[17]}  # nearest rank
    assert report.providers["p"].share == pytest.approx(20 / 27)
    assert (report.providers["q"].served, report.providers["q"].served_share) == (5, pytest.approx(5 / 18))
    assert report.instant_providers == ["q"]


def test_windows_count_requests_by_arrival() -> None:
    windows = build_report(outcomes(), PROFILE, span_s=20.0, seed=1, windows=4).windows
    assert [(w.start_s, w.end_s, w.requests, w.succeeded) for w in windows] == [
        (0.0, 5.0, 5, 5), (5.0, 10.0, 5, 3), (10.0, 15.0, 5, 5), (15.0, 20.0, 5, 5)]
    assert [w.outages for w in windows] == [(), ("p refused",), (), ()]
    assert windows[1].success_rate == 0.6 and windows[1].share("q") == 1.0 and windows[2].share("p") == 0.6
    assert windows[1].attempts == 12


def test_recovery_times() -> None:
    report = build_report(outcomes(), PROFILE, span_s=20.0, seed=1)
    (recovery,) = report.recoveries
    assert report.normal_success_rate == 1.0  # the requests before the outage (0-5 s) were all answered
    assert (recovery.requests_during, recovery.success_during) == (5, 0.6)
    assert recovery.provider_back_s == 2.0  # the request that arrived at 12 s is p's first after the end (10 s)
    assert recovery.success_back_s == 0.0  # the requests from 10 s on were all answered


def test_success_back_waits_for_a_5_s_window_within_2_points_of_normal() -> None:
    broken = outcomes()
    for i in (10, 11, 13):
        broken.served[i] = FAILED  # after the end: 10-15 s has 2/5 answered, 11-16 s 3/5, 12-17 s and 13-18 s 4/5
    report = build_report(broken, PROFILE, span_s=20.0, seed=1)
    assert report.normal_success_rate == 1.0  # 0-5 s: the requests after the end are not "normal" ones
    assert report.recoveries[0].success_back_s == 4.0  # 14-19 s: 5/5


def test_the_json_object_has_the_contract_keys() -> None:
    data = build_report(outcomes(), PROFILE, span_s=20.0, seed=1).as_json()
    assert {"requests", "succeeded", "success_rate", "upstream_attempts", "latency_s", "providers"} <= set(data)
    assert set(data["latency_s"]) >= {"p50", "p99"}
    assert {name: set(figures) >= {"attempts", "share"} for name, figures in data["providers"].items()} == \
        {"p": True, "q": True}
    assert (data["requests"], data["succeeded"], data["success_rate"], data["upstream_attempts"]) == (20, 18, 0.9, 27)
    assert data["outages"] == [{"provider": "p", "kind": "refused", "start_s": 5.0, "end_s": 10.0,
                                "requests_during": 5, "success_rate_during": 0.6, "provider_back_s": 2.0,
                                "success_back_s": 0.0}]


def test_the_text_says_it_all() -> None:
    text = render(build_report(outcomes(), PROFILE, span_s=20.0, seed=1, windows=4,
                               notes=["a note"]), title="router simulate: test")
    for expected in ("router simulate: test", "20 requests over 20 s", "note: a note",
                     "not in the profile, so instant and never failing: q",
                     "success rate         90.00%   (18 answered; 2 failed: 2 no_target)",
                     "attempts/request      1.350   (mean; max 3)",
                     "upstream load        1.350x   (27 attempts reached a provider)",
                     "p refused 5-10 s: 5 requests during it, 60.0% answered; p serves again after 2.0 s; "
                     "success rate normal after 0 s",
                     "5-10                  5    60.0%     2.40      0%    100%   p refused"):
        assert expected in text, expected


def test_no_request_at_all() -> None:
    empty = Outcomes(providers=("p",), schedule=Schedule(array("d"), bytearray()))
    report = build_report(empty, PROFILE, span_s=20.0, seed=1)
    assert report.success_rate == 0.0 and report.latency_s == {"p50": None, "p90": None, "p99": None}
    assert "0 requests" in render(report, title="t")
