"""The fault profile of `router simulate`: what each provider does, read strictly like a policy file.

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

The same rules as the policy loader, and its own value checks (`router/policy/_fields.py`), so the
messages read the same: one document, no duplicate keys, strict types, unknown keys are errors, and
every problem names its key path (`faults.yaml: providers.aimo.errors.503: must be <= 1, got 5`).
Which providers may appear depends on the policy: `check_against` is the second pass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from router.policy import _fields as f
from router.policy._fields import Invalid
from router.policy._yaml import EMPTY, read_file, read_yaml
from router.policy.model import Policy
from router.sim.latency import LogNormal

OUTAGE_KINDS = ("refused", "503", "silent")
LIMIT_WINDOW_S = 60.0


class FaultProfileError(ValueError):
    """A fault profile is invalid: `source: key.path: problem`, like a policy error."""

    def __init__(self, problem: str, *, source: str, path: str = "") -> None:
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Outage:
    start_s: float
    end_s: float
    kind: str  # one of OUTAGE_KINDS

    def covers(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True)
class ProviderFaults:
    """One provider's behaviour. The defaults are a perfect provider: instant, never failing."""

    latency_p50: float = 0.0
    latency_p99: float = 0.0
    errors: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))  # status -> share
    stall_percent: float = 0.0
    limit_per_min: int | None = None
    outages: tuple[Outage, ...] = ()

    @property
    def latency(self) -> LogNormal:
        return LogNormal.fit(self.latency_p50, self.latency_p99)


@dataclass(frozen=True, slots=True)
class FaultProfile:
    duration_s: float
    rate_per_s: float
    stream_percent: float = 0.0
    providers: Mapping[str, ProviderFaults] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "<memory>"

    @property
    def outages(self) -> list[tuple[str, Outage]]:
        """Every outage as (provider, outage), in order of start."""
        return sorted(((name, o) for name, p in self.providers.items() for o in p.outages),
                      key=lambda pair: (pair[1].start_s, pair[0]))


# --- loading ------------------------------------------------------------------------------------


def load_profile(path: str | os.PathLike[str]) -> FaultProfile:
    """Read and validate a fault profile file (raises FaultProfileError naming the key path)."""
    source = os.fspath(path)
    try:
        text = read_file(source, "the fault profile")
    except ValueError as error:
        raise FaultProfileError(str(error), source=source) from None
    return parse_profile(text, source=source)


def parse_profile(text: str, *, source: str = "<memory>") -> FaultProfile:
    try:
        data = read_yaml(text)
        if data is EMPTY:
            raise Invalid("the fault profile is empty; it needs at least `duration_s` and `rate_per_s`", "")
        return _profile(data, source)
    except Invalid as problem:
        raise FaultProfileError(problem.problem, source=source, path=problem.path) from None


def check_against(profile: FaultProfile, policy: Policy) -> None:
    """Every provider the profile names must be one of the policy's."""
    known = list(policy.providers)
    for name in profile.providers:
        if name not in policy.providers:
            hint = f.suggestion(name, known)
            raise FaultProfileError(f"unknown provider{hint}; the policy has {', '.join(known)}",
                                    source=profile.source, path=f.join("providers", name))


# --- sections -----------------------------------------------------------------------------------


def _profile(data: object, source: str) -> FaultProfile:
    parsers = {
        "duration_s": f.positive,
        "rate_per_s": f.positive,
        "stream_percent": _percent,
        "providers": _providers,
    }
    values = f.fields(f.mapping(data, "", "a mapping with `duration_s`, `rate_per_s` and `providers`"), "",
                      parsers, required=("duration_s", "rate_per_s"))
    return FaultProfile(**values, source=source)


def _percent(value: object, path: str) -> float:
    return f.number(value, path, ge=0, le=100)


def _providers(value: object, path: str) -> Mapping[str, ProviderFaults]:
    result: dict[str, ProviderFaults] = {}
    for name, raw in f.section(value, path).items():
        entry = f.join(path, name)
        if not isinstance(name, str) or not name.strip():
            raise Invalid(f"provider names must be non-empty strings, got {f.describe(name)}", entry)
        result[name] = _provider(raw, entry)
    return MappingProxyType(result)


def _provider(value: object, path: str) -> ProviderFaults:
    parsers = {
        "latency_s": _latency,
        "errors": _errors,
        "stall_percent": _percent,
        "limit_per_min": f.optional(f.at_least_one),
        "outages": _outages,
    }
    values = f.fields(f.section(value, path), path, parsers)
    p50, p99 = values.pop("latency_s", (0.0, 0.0))
    return ProviderFaults(latency_p50=p50, latency_p99=p99, **values)


def _latency(value: object, path: str) -> tuple[float, float]:
    values = f.fields(f.mapping(value, path, "a mapping such as {p50: 0.8, p99: 3.0}"), path,
                      {"p50": f.non_negative, "p99": f.non_negative}, required=("p50", "p99"))
    p50, p99 = values["p50"], values["p99"]
    if p99 < p50:
        raise Invalid(f"must be >= p50 ({f.plain(p50)}), got {f.plain(p99)}", f.join(path, "p99"))
    if p50 == 0 and p99 > 0:
        raise Invalid("must be 0 when p50 is 0 (a log-normal with a median of 0 has every quantile at 0); "
                      "for a mostly fast provider, give p50 a small positive value", f.join(path, "p99"))
    return p50, p99


def _errors(value: object, path: str) -> Mapping[int, float]:
    shares: dict[int, float] = {}
    for key, raw in f.section(value, path).items():
        entry = f.join(path, key)
        status = _status(key)
        if status is None:
            raise Invalid(f"must be an HTTP error status (400-599) such as 503 or 429, got {f.describe(key)}", entry)
        if status in shares:
            raise Invalid(f"status {status} is set twice", entry)
        shares[status] = f.number(raw, entry, ge=0, le=1)
    total = sum(shares.values())
    if total > 1 + 1e-9:
        raise Invalid(f"shares must add up to at most 1, got {f.plain(total)}", path)
    return MappingProxyType(shares)


def _status(key: object) -> int | None:
    """YAML reads `503:` as an int; a quoted "503" is accepted too."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        status = key
    elif isinstance(key, str) and key.isascii() and key.isdigit():
        status = int(key)
    else:
        return None
    return status if 400 <= status <= 599 else None


def _outages(value: object, path: str) -> tuple[Outage, ...]:
    outages: list[Outage] = []
    for index, raw in enumerate(f.sequence(value or [], path, "a list of outages")):
        entry = f.item(path, index)
        outage = _outage(raw, entry)
        for other_index, other in enumerate(outages):
            if outage.start_s < other.end_s and other.start_s < outage.end_s:
                raise Invalid(f"overlaps {f.item(path, other_index)} ({f.plain(other.start_s)}-"
                              f"{f.plain(other.end_s)} s); one provider has one outage at a time", entry)
        outages.append(outage)
    return tuple(sorted(outages, key=lambda o: o.start_s))


def _outage(value: object, path: str) -> Outage:
    parsers: dict[str, Any] = {
        "start_s": f.non_negative,
        "end_s": f.positive,
        "kind": lambda raw, p: f.choice(str(raw) if raw == 503 and not isinstance(raw, bool) else raw, p,
                                        OUTAGE_KINDS),
    }
    values = f.fields(f.mapping(value, path, "a mapping such as {start_s: 60, end_s: 180, kind: refused}"), path,
                      parsers, required=("start_s", "end_s", "kind"))
    if values["end_s"] <= values["start_s"]:
        raise Invalid(f"must be > start_s ({f.plain(values['start_s'])}), got {f.plain(values['end_s'])}",
                      f.join(path, "end_s"))
    return Outage(**values)
