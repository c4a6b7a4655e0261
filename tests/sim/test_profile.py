"""The fault profile loader: the contract's example, defaults, and every kind of mistake named by its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.policy import parse_policy
from router.sim.profile import FaultProfileError, Outage, ProviderFaults, check_against, load_profile, parse_profile

CONTRACT = """
duration_s: 600
rate_per_s: 50
stream_percent: 70
providers:
  aimo:
    latency_s: {p50: 0.8, p99: 3.0}     # to the first byte / first event
    errors: {503: 0.05, 429: 0.02}      # share of attempts
    stall_percent: 1                     # streams that stop mid-answer
    limit_per_min: 600                   # 429 with Retry-After beyond it
    outages: [{start_s: 60, end_s: 180, kind: refused}]   # refused | 503 | silent
"""
POLICY = """
providers:
  aimo: {base_url: "https://devnet.aimo.network/api/v1"}
  asi1: {base_url: "https://api.asi1.ai/v1"}
routes:
  chat: {targets: [{provider: aimo, model: m}, {provider: asi1, model: m, priority: 1}]}
"""


def test_the_contract_example_loads_as_written() -> None:
    profile = parse_profile(CONTRACT, source="faults.yaml")
    assert (profile.duration_s, profile.rate_per_s, profile.stream_percent) == (600.0, 50.0, 70.0)
    aimo = profile.providers["aimo"]
    assert (aimo.latency_p50, aimo.latency_p99) == (0.8, 3.0)
    assert dict(aimo.errors) == {503: 0.05, 429: 0.02}
    assert aimo.stall_percent == 1.0 and aimo.limit_per_min == 600
    assert aimo.outages == (Outage(60.0, 180.0, "refused"),)
    assert profile.outages == [("aimo", Outage(60.0, 180.0, "refused"))]
    check_against(profile, parse_policy(POLICY))


def test_only_duration_and_rate_are_required_and_a_named_provider_defaults_to_perfect() -> None:
    profile = parse_profile("duration_s: 10\nrate_per_s: 2.5\nproviders:\n  asi1:\n")
    assert profile.stream_percent == 0.0
    assert profile.providers["asi1"] == ProviderFaults()
    assert profile.providers["asi1"].latency.quantile(0.99) == 0.0


def test_outages_are_sorted_and_a_503_kind_may_be_written_bare() -> None:
    profile = parse_profile("duration_s: 10\nrate_per_s: 1\nproviders:\n  aimo:\n    outages:\n"
                            "      - {start_s: 5, end_s: 6, kind: 503}\n      - {start_s: 1, end_s: 2, kind: silent}\n")
    assert [o.kind for o in profile.providers["aimo"].outages] == ["silent", "503"]


def test_a_quoted_status_is_accepted() -> None:
    profile = parse_profile('duration_s: 1\nrate_per_s: 1\nproviders:\n  aimo: {errors: {"502": 0.5}}\n')
    assert dict(profile.providers["aimo"].errors) == {502: 0.5}


def _swap(old: str, new: str) -> str:
    assert old in CONTRACT
    return CONTRACT.replace(old, new)


@pytest.mark.parametrize(("text", "message"), [
    ("", "faults.yaml: the fault profile is empty; it needs at least `duration_s` and `rate_per_s`"),
    ("- 1\n", "faults.yaml: must be a mapping with `duration_s`, `rate_per_s` and `providers`, got a list"),
    ("duration_s: 1\n", "faults.yaml: rate_per_s: is required"),
    ("duration_s: 1\nrate_per_s: 1\nrate_per_sec: 2\n",
     "faults.yaml: rate_per_sec: unknown key `rate_per_sec` (did you mean `rate_per_s`?)"),
    ("duration_s: 1\nrate_per_s: 1\nrate: 2\n", "faults.yaml: rate: unknown key `rate`; expected one of `duration_s`, "
                                               "`providers`, `rate_per_s`, `stream_percent`"),
    (_swap("duration_s: 600", "duration_s: 0"), "faults.yaml: duration_s: must be > 0, got 0"),
    (_swap("rate_per_s: 50", 'rate_per_s: "50"'), 'faults.yaml: rate_per_s: must be a number, got "50"'),
    (_swap("stream_percent: 70", "stream_percent: 170"), "faults.yaml: stream_percent: must be <= 100, got 170"),
    (_swap("duration_s: 600", "duration_s: 600\nduration_s: 60"),
     "faults.yaml: duration_s: duplicate key `duration_s` (lines 2 and 3)"),
    ("duration_s: 1\nrate_per_s: 1\nproviders: [aimo]\n", "faults.yaml: providers: must be a mapping, got a list"),
    ("duration_s: 1\nrate_per_s: 1\nproviders: {1: {}}\n",
     "faults.yaml: providers.1: provider names must be non-empty strings, got 1"),
    (_swap("stall_percent: 1", "stall_pct: 1"),
     "faults.yaml: providers.aimo.stall_pct: unknown key `stall_pct` (did you mean `stall_percent`?)"),
    (_swap("stall_percent: 1", "stall_percent: -1"), "faults.yaml: providers.aimo.stall_percent: must be >= 0, got -1"),
    (_swap("p99: 3.0", "p99: 0.5"), "faults.yaml: providers.aimo.latency_s.p99: must be >= p50 (0.8), got 0.5"),
    (_swap("{p50: 0.8, p99: 3.0}", "{p50: 0.8}"), "faults.yaml: providers.aimo.latency_s.p99: is required"),
    (_swap("{p50: 0.8, p99: 3.0}", "{p50: 0, p99: 3}"),
     "faults.yaml: providers.aimo.latency_s.p99: must be 0 when p50 is 0"),
    (_swap("{p50: 0.8, p99: 3.0}", "0.8"),
     "faults.yaml: providers.aimo.latency_s: must be a mapping such as {p50: 0.8, p99: 3.0}, got 0.8"),
    (_swap("503: 0.05", "503: 5"), "faults.yaml: providers.aimo.errors.503: must be <= 1, got 5"),
    (_swap("503: 0.05", "200: 0.05"),
     "faults.yaml: providers.aimo.errors.200: must be an HTTP error status (400-599) such as 503 or 429, got 200"),
    (_swap("503: 0.05", "timeout: 0.05"), "faults.yaml: providers.aimo.errors.timeout: must be an HTTP error status"),
    (_swap("503: 0.05", "503: 0.6, 502: 0.6"), "faults.yaml: providers.aimo.errors: shares must add up to at most 1, "
                                               "got 1.2"),
    (_swap("limit_per_min: 600", "limit_per_min: 0"), "faults.yaml: providers.aimo.limit_per_min: must be >= 1, got 0"),
    (_swap("limit_per_min: 600", "limit_per_min: 1.5"),
     "faults.yaml: providers.aimo.limit_per_min: must be an integer, got 1.5"),
    (_swap("kind: refused", "kind: refuse"), "faults.yaml: providers.aimo.outages[0].kind: must be one of `refused`, "
                                             '`503`, `silent`, got "refuse" (did you mean `refused`?)'),
    (_swap("end_s: 180", "end_s: 60"), "faults.yaml: providers.aimo.outages[0].end_s: must be > start_s (60), got 60"),
    (_swap(", kind: refused", ""), "faults.yaml: providers.aimo.outages[0].kind: is required"),
    (_swap("kind: refused}]", "kind: refused}, {start_s: 100, end_s: 200, kind: silent}]"),
     "faults.yaml: providers.aimo.outages[1]: overlaps providers.aimo.outages[0] (60-180 s); one provider has one "
     "outage at a time"),
    (_swap("outages: [", "outages: {"), "faults.yaml: invalid YAML"),
])
def test_bad_profiles_are_refused_with_the_key_path(text: str, message: str) -> None:
    with pytest.raises(FaultProfileError) as caught:
        parse_profile(text, source="faults.yaml")
    assert str(caught.value).startswith(message)


def test_a_provider_the_policy_does_not_have_is_named_with_what_the_policy_has() -> None:
    profile = parse_profile(CONTRACT.replace("  aimo:", "  aimoo:"), source="faults.yaml")
    with pytest.raises(FaultProfileError) as caught:
        check_against(profile, parse_policy(POLICY))
    assert str(caught.value) == ("faults.yaml: providers.aimoo: unknown provider (did you mean `aimo`?); "
                                 "the policy has aimo, asi1")
    assert caught.value.path == "providers.aimoo"


def test_files_that_cannot_be_read_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FaultProfileError, match="cannot read the fault profile"):
        load_profile(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"duration_s: \xff\n")
    with pytest.raises(FaultProfileError, match="not valid UTF-8"):
        load_profile(binary)
    good = tmp_path / "good.yaml"
    good.write_text(CONTRACT, encoding="utf-8")
    assert load_profile(good).source == str(good)
