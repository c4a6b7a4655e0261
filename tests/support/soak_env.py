"""The soak's world: three fake providers with a mixed fault diet, and their policy (the daemon: daemon.py).

- `SoakFaults`: every fault kind the fake provider supports, each at its own rate, with
  answers that are identifiable per request (`loadgen.answer_for`) and that continue a
  prefill correctly, so a stream continued on another provider must come out whole, once.
- `SoakProviders`: the three fakes on 127.0.0.1; they can go down (nothing listens: the
  router's connects are refused), come back on the same port, flap briefly at random, and
  keep the hits of the requests a test asked to watch (e.g. the ones a client abandons).
- `soak_policy()`: the policy the daemon runs (YAML text).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import yaml

from router.mock import (
    FakeProvider,
    Fault,
    Hang,
    Hit,
    Ok,
    RandomFaults,
    RequestView,
    Reset,
    SlowFirstByte,
    Status,
    Stream,
)
from tests.support.load import answer_for

PROVIDERS = ("alpha", "beta", "gamma")
PREFILL_PROVIDERS = ("alpha", "beta")  # gamma cannot continue a cut stream: some cuts must end in an error event

# Per-attempt timeouts of the soak policy; the slow faults are built to exceed them.
CONNECT_S, FIRST_BYTE_S, IDLE_S, TTFT_S = 0.5, 0.4, 0.3, 0.3

# Each fault kind at 1-5% of the attempts a provider receives. Kinds marked (s) apply to streamed
# requests; a JSON request drawing one gets its JSON counterpart (see SoakFaults._fault).
FAULT_MIX: dict[str, float] = {
    "500": 0.02,
    "502_html": 0.01,  # a proxy's HTML error page
    "503": 0.02,
    "504": 0.01,
    "429_retry_after": 0.01,  # Retry-After: 1 and retry-after-ms: 50 (the router honours the ms one)
    "429": 0.01,  # no Retry-After: the router throttles the provider for a backoff delay
    "reset": 0.02,  # RST before any byte
    "disconnect": 0.01,  # FIN before any byte ("server disconnected")
    "hang": 0.01,  # never answers: first-byte timeout
    "slow_first_byte": 0.01,  # headers after FIRST_BYTE_S + 0.3: first-byte timeout
    "slow_ok": 0.02,  # headers after 50 ms, then a normal answer: not a failure
    "slow_first_token": 0.01,  # (s) headers at once, first event after TTFT_S + 0.2
    "cut": 0.02,  # (s) connection closed mid-answer
    "stall": 0.01,  # (s) nothing more after a few chunks: idle timeout
    "truncated": 0.01,  # (s) clean EOF without finish_reason
    "malformed": 0.02,  # (s) a broken event in the stream (skipped); JSON: a 200 with truncated JSON
    "error_first": 0.01,  # (s) the first event is an error; JSON: a 200 whose body is an error
}
# Kinds that are not a failed attempt when they hit a request of that kind (JSON, stream).
HARMLESS = {"slow_ok": (True, True), "malformed": (False, True), "slow_first_token": (True, False)}


def failing_rate(mix: Mapping[str, float], *, stream: bool) -> float:
    """Share of attempts that fail for a JSON (`stream=False`) or a streamed request."""
    return sum(rate for kind, rate in mix.items() if not HARMLESS.get(kind, (False, False))[int(stream)])


def _last_user_text(view: RequestView) -> str:
    for message in reversed(view.messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


@dataclass(frozen=True)
class SoakFaults(RandomFaults):
    """One draw per attempt from `mix` (else a normal answer), answering `answer_for(prompt)`.

    It subclasses RandomFaults because the fake resolves request-dependent faults by that
    type; `rates` stays empty and the draw uses `mix`, which has more kinds than the CLI's.
    With an assistant prefill that is a prefix of the answer, only the rest is answered,
    as a prefill-capable provider would.
    """

    mix: Mapping[str, float] = field(default_factory=dict)
    chunks: int = 6
    interval_s: float = 0.002
    delay_s: float = 0.0  # before every normal answer (headers included)
    _draws: random.Random = field(init=False, repr=False, compare=False)
    drawn: Counter[str] = field(init=False, repr=False, compare=False)  # kind -> times drawn ("ok": none)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.mix) - set(FAULT_MIX)
        if unknown:
            raise ValueError(f"SoakFaults: unknown fault kinds {sorted(unknown)}")
        if sum(self.mix.values()) > 1.0:
            raise ValueError("SoakFaults: rates sum to more than 1")
        object.__setattr__(self, "_draws", random.Random(self.seed))
        object.__setattr__(self, "drawn", Counter())

    def pick(self, request: RequestView) -> Fault:
        full = answer_for(_last_user_text(request))
        prefill = request.prefill
        content = full[len(prefill):] if prefill is not None and full.startswith(prefill) else full
        base = Ok(content=content, chunks=self.chunks, interval_s=self.interval_s, delay_s=self.delay_s)
        draws, drawn = self._draws, self.drawn
        draw = draws.random()
        for kind, rate in self.mix.items():
            if draw < rate:
                drawn[kind] += 1
                return self._fault(kind, request.stream, base, content, draws)
            draw -= rate
        drawn["ok"] += 1
        return base

    def _fault(self, kind: str, stream: bool, base: Ok, content: str, draws: random.Random) -> Fault:
        pieces = min(self.chunks, len(content))
        middle = draws.randint(1, pieces - 1) if pieces > 1 else 0
        paced = {"content": content, "chunks": self.chunks, "interval_s": self.interval_s}
        match kind:
            case "500" | "503" | "504":
                return Status(int(kind), "server_error")
            case "502_html":
                return Status(502, body="<html><body><h1>502 Bad Gateway</h1></body></html>",
                              headers={"Content-Type": "text/html"}, label="502_html")
            case "429_retry_after":
                return Status.rate_limited("1", headers={"retry-after-ms": "50"})
            case "429":
                return Status.rate_limited(None)
            case "reset":
                return Reset(rst=True)
            case "disconnect":
                return Reset(rst=False, label="disconnect")
            case "hang":
                return Hang()
            case "slow_first_byte":
                return SlowFirstByte(FIRST_BYTE_S + 0.3, then=base)
            case "slow_ok":
                return SlowFirstByte(0.05, then=base)
        if not stream:
            return {
                "cut": Reset(rst=False, label="disconnect"),
                "stall": Hang(),
                "truncated": Status(200, body=b'{"id": "chatcmpl-cut", "object": "chat.completion", "choi',
                                    label="json_truncated"),
                "malformed": Status(200, body=b'{"id": "chatcmpl-bad", "choices": [{"index": 0, "mess',
                                    label="json_malformed"),
                "error_first": Status(200, body=b'{"error": {"message": "overloaded", "type": "server_error", '
                                                b'"param": null, "code": "server_error"}}', label="json_error"),
            }.get(kind, base)
        match kind:
            case "slow_first_token":
                return Stream(**paced, first_delay_s=TTFT_S + 0.2, label="slow_first_token")
            case "cut":
                return Stream(**paced, cut_after=middle)
            case "stall":
                return Stream(**paced, stall_after=middle)
            case "truncated":
                return Stream(**paced, send_finish_reason=False, send_done=False)
            case "malformed":
                return Stream(**paced, malformed_at=max(1, middle))
            case _:
                return Stream(**paced, error_first=True)


# -- the providers -------------------------------------------------------------------------------

class SoakProviders:
    """The three fake providers. Keeps only recent hits, plus every hit of a watched request id."""

    def __init__(self, names: Sequence[str] = PROVIDERS, *, mix: Mapping[str, float] | None = None,
                 seed: int = 0, max_hits: int = 2_000) -> None:
        self.names = tuple(names)
        self.mix = dict(FAULT_MIX if mix is None else mix)
        self.fakes: dict[str, FakeProvider] = {}
        self.ports: dict[str, int] = {}
        self.watched: dict[str, list[Hit]] = {}  # request id -> its hits, at every provider
        self._seen: dict[str, int] = {}
        self._seed = seed
        self._max_hits = max_hits
        self._scanner: asyncio.Task[None] | None = None
        self.restarts = 0

    async def __aenter__(self) -> Self:
        for index, name in enumerate(self.names):
            fake = FakeProvider(name, models=(f"{name}-model",), max_hits=self._max_hits)
            fake.set_default(self.faults(self._seed * 10 + index))
            await fake.start("127.0.0.1", 0)
            self.fakes[name] = fake
            self.ports[name] = int(str(fake.base_url).rsplit(":", 1)[1].split("/")[0])
            self._seen[name] = 0
        self._scanner = asyncio.create_task(self._scan_forever())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scanner
        for fake in self.fakes.values():
            await fake.stop()

    def faults(self, seed: int) -> Fault:
        return SoakFaults(rates={}, mix=self.mix, seed=seed)

    def base_urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}/v1" for name, port in self.ports.items()}

    def set_faults(self, name: str, mix: Mapping[str, float], **options: Any) -> None:
        """Give one provider its own fault mix, and SoakFaults options (chunks, interval_s, delay_s)."""
        seed = self._seed * 10 + self.names.index(name) + 100
        self.fakes[name].set_default(SoakFaults(rates={}, mix=dict(mix), seed=seed, **options))

    def faults_drawn(self) -> Counter[str]:
        """Fault kinds the providers drew so far, over all of them ("ok": no fault)."""
        total: Counter[str] = Counter()
        for fake in self.fakes.values():
            if isinstance(fake.default, SoakFaults):
                total.update(fake.default.drawn)
        return total

    @property
    def total_hits(self) -> int:
        return sum(fake.total_hits for fake in self.fakes.values())

    def provider_of(self, hit: Hit) -> str:
        """Which provider saw `hit` (from the port in its Host header)."""
        port = int(hit.headers_ci.get("Host", ":0").rsplit(":", 1)[1])
        return next(name for name, known in self.ports.items() if known == port)

    # -- watching request ids --------------------------------------------------------------------
    def watch(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            self.watched.setdefault(request_id, [])

    def scan(self) -> None:
        """Move the hits of watched request ids out of the fakes' bounded hit lists."""
        for name, fake in self.fakes.items():
            new = fake.total_hits - self._seen[name]
            if new <= 0:
                continue
            self._seen[name] = fake.total_hits
            for hit in fake.hits[-new:] if new <= len(fake.hits) else fake.hits:
                request_id = hit.request_id
                if request_id is not None and request_id in self.watched:
                    self.watched[request_id].append(hit)

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.scan()

    # -- outages -----------------------------------------------------------------------------------
    async def take_down(self, name: str) -> None:
        """Stop listening and drop every connection: connects to its port are refused."""
        self.scan()
        await self.fakes[name].stop()

    async def bring_up(self, name: str) -> None:
        await self.fakes[name].start("127.0.0.1", self.ports[name])

    async def flap(self, stop: asyncio.Event, *, down_s: float = 0.1, every_s: tuple[float, float] = (3.0, 7.0),
                   seed: int = 0) -> None:
        """Until `stop`: each provider restarts now and then, refusing connections for `down_s`."""
        async def one(name: str, rng: random.Random) -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), rng.uniform(*every_s))
                if stop.is_set():
                    return
                await self.take_down(name)
                await asyncio.sleep(down_s)
                await self.bring_up(name)
                self.restarts += 1

        await asyncio.gather(*(one(name, random.Random(seed * 31 + i)) for i, name in enumerate(self.names)))


# -- the policy ------------------------------------------------------------------------------------

def soak_policy(base_urls: Mapping[str, str], *, prefill: Sequence[str] = PREFILL_PROVIDERS,
                max_attempts: int = 3, budget: Mapping[str, float] | None = None, deadline_s: float = 5.0,
                breaker: Mapping[str, float] | None = None, drain_s: float = 5.0,
                timeouts: Mapping[str, float] | None = None, ttft_s: float | None = TTFT_S,
                retry: Mapping[str, float] | None = None, priorities: Mapping[str, int] | None = None,
                weights: Mapping[str, float] | None = None, extra_routes: Mapping[str, Any] | None = None) -> str:
    """One route `chat` over the providers: one tier with equal weights unless `priorities`/`weights` say."""
    providers = {
        name: {
            "base_url": url,
            "timeouts": {"connect_s": CONNECT_S, "first_byte_s": FIRST_BYTE_S, "idle_s": IDLE_S, **(timeouts or {})},
            "breaker": {"consecutive_failures": 5, "base_ejection_s": 1.0, "max_ejection_s": 5.0, **(breaker or {})},
            "supports_prefill": name in prefill,
        } for name, url in base_urls.items()}
    targets = [{"provider": name, "model": f"{name}-model", "priority": (priorities or {}).get(name, 0),
                "weight": (weights or {}).get(name, 1.0)} for name in base_urls]
    route: dict[str, Any] = {
        "targets": targets,
        "retry": {"max_attempts": max_attempts, "max_attempts_per_target": 2, "base_interval_s": 0.01,
                  "max_interval_s": 0.1, "wait_for_preferred_s": 0.2, **(retry or {})},
        "deadline_s": deadline_s,
    }
    if ttft_s is not None:
        route["ttft_s"] = ttft_s
    data = {"version": 1, "providers": providers, "routes": {"chat": route, **(extra_routes or {})},
            "retry_budget": dict(budget or {"percent": 50, "min_per_second": 5, "window_s": 10}),
            "server": {"host": "127.0.0.1", "drain_timeout_s": drain_s}}
    return yaml.safe_dump(data, sort_keys=False)
