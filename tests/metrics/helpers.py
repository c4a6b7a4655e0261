"""Helpers for the metrics tests: a parsed scrape, answers for the in-memory transport, policies as YAML."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.observe.observer import NullObserver
from router.policy.model import Policy
from router.upstream.transport import Outgoing
from tests.support.memory import MemoryReply, completion_reply, error_reply
from tests.support.policies import make_policy

# -- a parsed /metrics page ----------------------------------------------------------------------

@dataclass(frozen=True)
class Scrape:
    """Every sample of a Prometheus text page: {(sample name, sorted label items): value}."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    types: dict[str, str]  # family name -> type

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(samples, types)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Scrape:
        return cls.parse(generate_latest(registry).decode())

    def get(self, name: str, **labels: str) -> float:
        """The sum of `name` over every series whose labels include `labels` (0 if none)."""
        wanted = set(labels.items())
        return sum(value for (sample, items), value in self.samples.items()
                   if sample == name and wanted <= set(items))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {items: value for (sample, items), value in self.samples.items() if sample == name}

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(items)[label] for items in self.series(name) if label in dict(items)}


# -- answers for the in-memory transport (tests/support/memory.py) --------------------------------

def ok(outgoing: Outgoing) -> MemoryReply:
    return completion_reply()


def error(status: int, headers: Mapping[str, str] | None = None) -> MemoryReply:
    return error_reply(status, headers=headers)


# -- what an observer was told ---------------------------------------------------------------------

class CountingObserver(NullObserver):
    """Records request starts/finishes and attempts, to check the pairing contract."""

    __slots__ = ("attempts", "finished", "gaps", "malformed", "started", "tokens")

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str, str]] = []
        self.attempts: list[tuple[str, str, str]] = []
        self.gaps: list[tuple[str, float]] = []
        self.malformed: list[str] = []
        self.tokens: list[tuple[str, str, int, int]] = []

    def request_started(self, route: str, client: str) -> None:
        self.started.append((route, client))

    def request_finished(self, route: str, client: str, outcome: str, duration_s: float) -> None:
        assert duration_s >= 0
        self.finished.append((route, client, outcome))

    def attempt_finished(self, route: str, provider: str, outcome: str, duration_s: float,
                         ttfb_s: float | None) -> None:
        self.attempts.append((route, provider, outcome))

    def stream_chunk_gap(self, provider: str, gap_s: float, events: int = 1) -> None:
        assert gap_s >= 0 and events >= 1
        self.gaps.append((provider, gap_s))
        self.gaps.extend([(provider, 0.0)] * (events - 1))

    def malformed_event(self, provider: str) -> None:
        self.malformed.append(provider)

    def tokens_used(self, route: str, provider: str, prompt: int, completion: int) -> None:
        self.tokens.append((route, provider, prompt, completion))

    def assert_paired(self) -> None:
        """Every start has exactly one finish with the same route and client."""
        assert sorted(self.started) == sorted((route, client) for route, client, _ in self.finished)


# -- policies ------------------------------------------------------------------------------------

def policy(providers: Iterable[str] | Mapping[str, Mapping[str, Any]], routes: Mapping[str, Any],
           env: Mapping[str, str] | None = None, **top: Any) -> Policy:
    """A policy from plain mappings; providers point at unused .test URLs unless given."""
    blocks = {name: {"base_url": f"http://{name}.test/v1"} for name in providers} \
        if not isinstance(providers, Mapping) else {name: dict(block) for name, block in providers.items()}
    return make_policy(blocks, routes, env=env, **top)


def route(*targets: str, **fields: Any) -> dict[str, Any]:
    """Targets `provider` (model `<provider>-model`) in failover order."""
    return {"targets": [{"provider": p, "model": f"{p}-model", "priority": i} for i, p in enumerate(targets)],
            "retry": {"base_interval_s": 0.001, "max_interval_s": 0.002}, **fields}
