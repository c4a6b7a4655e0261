"""Load generation and answer checking for the resilience soak: aiohttp and the standard library only.

This module does not import the router, so the same load can be pointed at anything
OpenAI-compatible. The tests (`tests/resilience/`) and `bench/soak.py` both use it;
imports go one way: bench -> tests.support -> router.

Every request is identifiable: its `X-Request-ID` is `<prefix>-<index>` and its prompt
is `prompt_for(request_id)`. The fake providers of the soak answer `answer_for(prompt)`
(the prompt itself plus words derived from its hash), so a client can tell its own
answer from anyone else's, a truncated one from a complete one, and a stream that was
stitched together twice from one that was continued exactly once.

Each request ends in exactly one outcome:

- `complete`: a 200 whose answer is exactly the expected one (a JSON body, or an SSE
  stream ending with `[DONE]` whose chunks share one id);
- `error`: a clean error: an OpenAI error body with a 4xx/5xx status, or a stream that
  ends with an error event (no `[DONE]`) after a correct prefix of the answer;
- `cancelled`: the client walked away on purpose (a planned disconnect);
- `anomaly`: anything else, with a `detail` naming what was wrong (wrong or foreign
  content, a `[DONE]` after a truncated answer, a stream without an end, a connection the
  daemon dropped, no outcome within `timeout_s`, ...). A correct router produces none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

COMPLETE, ERROR, CANCELLED, ANOMALY = "complete", "error", "cancelled", "anomaly"
OUTCOMES = (COMPLETE, ERROR, CANCELLED, ANOMALY)

_WORDS = ("amber", "basalt", "cinder", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
          "kelp", "lumen", "meadow", "nickel", "onyx", "prairie", "quartz", "russet", "saffron", "tundra",
          "umber", "violet", "willow", "xenon", "yarrow", "zephyr")


# -- identifiable answers ------------------------------------------------------------------------

def prompt_for(request_id: str) -> str:
    return f"soak request {request_id}"


def answer_for(prompt: str) -> str:
    """The answer the soak's fake providers give to `prompt`: unique per prompt, ~100 characters."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=12).digest()
    return f"<{prompt}> " + " ".join(_WORDS[byte % len(_WORDS)] for byte in digest) + "."


# -- one request ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoadConfig:
    """What to send. Both bounds apply: at most `requests` requests, none started after `duration_s`."""

    url: str  # .../v1/chat/completions
    requests: int
    duration_s: float
    concurrency: int = 64  # closed loop: workers; open loop: the cap on requests in flight
    rate: float | None = None  # open loop: arrivals per second; None = closed loop
    stream_ratio: float = 0.5
    disconnect_ratio: float = 0.0  # share of requests the client abandons on purpose
    disconnect_window_s: float = 0.05  # a timed disconnect happens U(0, window) after sending
    mid_stream_share: float = 0.5  # of the abandoned streams: walk away after 1-4 events instead of a timer
    seed: int = 0
    model: str = "chat"
    id_prefix: str = "soak"
    timeout_s: float = 30.0  # a request without an outcome after this is an anomaly ("no_outcome")
    max_tokens: int = 64


@dataclass(frozen=True, slots=True)
class Plan:
    index: int
    stream: bool
    disconnect_delay_s: float | None = None  # walk away this long after sending (any request)
    disconnect_after_events: int | None = None  # streams: walk away after this many events


def plan_for(config: LoadConfig, index: int) -> Plan:
    """Deterministic per (seed, index), so a run can be repeated request for request."""
    rng = random.Random(config.seed * 1_000_003 + index)
    stream = rng.random() < config.stream_ratio
    if rng.random() >= config.disconnect_ratio:
        return Plan(index, stream)
    if stream and rng.random() < config.mid_stream_share:
        return Plan(index, stream, disconnect_after_events=rng.randint(1, 4))
    return Plan(index, stream, disconnect_delay_s=rng.uniform(0.0, config.disconnect_window_s))


@dataclass(slots=True)
class Result:
    index: int
    request_id: str
    stream: bool
    planned_disconnect: bool
    started: float  # time.monotonic() when sent
    ended: float = 0.0
    outcome: str = ANOMALY
    detail: str = ""  # anomaly kind, or the error's "<status>:<code>"
    status: int | None = None
    attempts: int | None = None  # x-router-attempts
    provider: str | None = None  # x-router-provider
    retry_after: str | None = None
    headers_at: float | None = None
    disconnected_at: float | None = None  # the earliest moment the client could have closed

    @property
    def latency(self) -> float:
        return self.ended - self.started


def _error_detail(status: int, raw: bytes) -> str | None:
    """`<status>:<code>` for an OpenAI error body, None if the body is not one."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        return None
    if not isinstance(error["message"], str) or not error["message"]:
        return None
    return f"{status}:{error['code']}"


def judge_json(status: int, raw: bytes, expected: str) -> tuple[str, str]:
    if status == 200:
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return ANOMALY, "bad_json_answer"
        if content == expected:
            return COMPLETE, ""
        return ANOMALY, "truncated_answer" if isinstance(content, str) and expected.startswith(content) \
            else "foreign_content"
    if 400 <= status <= 599:
        detail = _error_detail(status, raw)
        return (ERROR, detail) if detail is not None else (ANOMALY, f"bad_error_body_{status}")
    return ANOMALY, f"status_{status}"


def judge_stream(payloads: Sequence[str], expected: str) -> tuple[str, str]:
    """Judge a relayed SSE stream from its `data:` payloads, in order."""
    if not payloads:
        return ANOMALY, "empty_stream"
    events: list[dict[str, Any]] = []
    for data in payloads:
        if data == "[DONE]":
            continue
        try:
            event = json.loads(data)
        except ValueError:
            return ANOMALY, "malformed_event_relayed"
        if not isinstance(event, dict):
            return ANOMALY, "malformed_event_relayed"
        events.append(event)
    errors = [event for event in events if event.get("error")]
    text = "".join(_delta_text(event) for event in events if not event.get("error"))
    ids = {event.get("id") for event in events if not event.get("error")}
    if not expected.startswith(text):
        return ANOMALY, "foreign_content"  # another request's text, or text repeated by a continuation
    if "[DONE]" in payloads:
        if payloads.count("[DONE]") != 1 or payloads[-1] != "[DONE]":
            return ANOMALY, "done_not_last"
        if errors:
            return ANOMALY, "done_after_error"
        if text != expected:
            return ANOMALY, "done_but_truncated"
        if len(ids) != 1:
            return ANOMALY, "mixed_chunk_ids"
        return COMPLETE, ""
    if errors:
        if not events[-1].get("error"):
            return ANOMALY, "events_after_error"
        code = errors[-1]["error"].get("code") if isinstance(errors[-1]["error"], dict) else None
        return ERROR, f"stream:{code}"
    return ANOMALY, "stream_without_end"


def _delta_text(event: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in event.get("choices") or ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                parts.append(content)
    return "".join(parts)


async def _exchange(session: aiohttp.ClientSession, config: LoadConfig, plan: Plan, result: Result) -> None:
    prompt = prompt_for(result.request_id)
    expected = answer_for(prompt)
    body: dict[str, Any] = {"model": config.model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": config.max_tokens}
    if plan.stream:
        body["stream"] = True
    async with session.post(config.url, json=body, headers={"X-Request-ID": result.request_id}) as response:
        result.headers_at = time.monotonic()
        result.status = response.status
        attempts = response.headers.get("x-router-attempts")
        result.attempts = int(attempts) if attempts and attempts.isdigit() else None
        result.provider = response.headers.get("x-router-provider")
        result.retry_after = response.headers.get("Retry-After")
        if response.status == 200 and response.headers.get("Content-Type", "").startswith("text/event-stream"):
            payloads: list[str] = []
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                payloads.append(line[5:].strip().decode("utf-8", "replace"))
                if plan.disconnect_after_events is not None and len(payloads) >= plan.disconnect_after_events \
                        and payloads[-1] != "[DONE]":
                    result.disconnected_at = time.monotonic()
                    response.close()
                    result.outcome, result.detail = CANCELLED, "after_events"
                    return
            result.outcome, result.detail = judge_stream(payloads, expected)
        else:
            raw = await response.read()
            result.outcome, result.detail = judge_json(response.status, raw, expected)


async def run_one(session: aiohttp.ClientSession, config: LoadConfig, plan: Plan) -> Result:
    request_id = f"{config.id_prefix}-{plan.index}"
    planned = plan.disconnect_delay_s is not None or plan.disconnect_after_events is not None
    result = Result(plan.index, request_id, plan.stream, planned, started=time.monotonic())
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(config.timeout_s):
            if plan.disconnect_delay_s is None:
                await _exchange(session, config, plan, result)
            else:
                cut_at = loop.time() + plan.disconnect_delay_s
                window = asyncio.timeout_at(cut_at)
                try:
                    async with window:
                        await _exchange(session, config, plan, result)
                except TimeoutError:
                    if not window.expired():
                        raise
                    # loop.time() is time.monotonic(): the close happened at cut_at or just after it.
                    result.disconnected_at = cut_at
                    result.outcome, result.detail = CANCELLED, "timed"
    except TimeoutError:
        result.outcome, result.detail = ANOMALY, "no_outcome"
    except (aiohttp.ClientError, OSError, UnicodeDecodeError) as exc:
        result.outcome, result.detail = ANOMALY, f"transport_{type(exc).__name__}"
    result.ended = time.monotonic()
    return result


# -- many requests -------------------------------------------------------------------------------

@dataclass(slots=True)
class LoadRun:
    config: LoadConfig
    results: list[Result] = field(default_factory=list)  # empty with keep_results=False
    tally: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, detail) of every request
    started: float = 0.0
    ended: float = 0.0
    late_starts: int = 0  # open loop: requests sent more than 50 ms after their due time
    max_start_lag: float = 0.0
    max_loop_lag: float = 0.0  # this process's event loop: the longest a 5 ms timer ran late

    @property
    def duration(self) -> float:
        return self.ended - self.started

    @property
    def count(self) -> int:
        return sum(self.tally.values())

    def outcomes(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (outcome, _), n in self.tally.items():
            out[outcome] += n
        return out

    def details(self, outcome: str) -> Counter[str]:
        return Counter({detail: n for (kind, detail), n in self.tally.items() if kind == outcome})

    def between(self, start: float, end: float) -> list[Result]:
        """Requests sent in [start, end) (time.monotonic())."""
        return [result for result in self.results if start <= result.started < end]


def new_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency + 16, limit_per_host=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


async def run_load(config: LoadConfig, *, stop: asyncio.Event | None = None,
                   on_result: Callable[[Result], None] | None = None, keep_results: bool = True) -> LoadRun:
    """Send requests until `config.requests` were sent, `config.duration_s` passed or `stop` is set,
    then wait for the ones in flight (each bounded by `config.timeout_s`).

    `keep_results=False` keeps only the tally: a long run then holds no per-request objects, whose
    garbage collection would pause this process and turn an open-loop load into bursts."""
    run = LoadRun(config)
    stop = stop or asyncio.Event()
    run.started = time.monotonic()
    until = run.started + config.duration_s
    counter = iter(range(config.requests))

    def keep_going() -> bool:
        return not stop.is_set() and time.monotonic() < until

    def record(result: Result) -> None:
        run.tally[(result.outcome, result.detail)] += 1
        if keep_results:
            run.results.append(result)
        if on_result is not None:
            on_result(result)

    probe = asyncio.create_task(_probe_loop_lag(run))
    try:
        await _drive(run, config, stop, record, keep_going, counter)
    finally:
        probe.cancel()
    run.ended = time.monotonic()
    return run


_PROBE_INTERVAL_S = 0.005


async def _probe_loop_lag(run: LoadRun) -> None:
    """How late this loop runs what is due: the fake providers living in this process read their
    requests just as late, which is how long after it was sent a provider may see an attempt."""
    while True:
        due = time.monotonic() + _PROBE_INTERVAL_S
        await asyncio.sleep(_PROBE_INTERVAL_S)
        run.max_loop_lag = max(run.max_loop_lag, time.monotonic() - due)


async def _drive(run: LoadRun, config: LoadConfig, stop: asyncio.Event, record: Callable[[Result], None],
                 keep_going: Callable[[], bool], counter: Iterator[int]) -> None:
    async with new_session(config.concurrency) as session:
        if config.rate is None:
            async def worker() -> None:
                for index in counter:
                    if not keep_going():
                        return
                    record(await run_one(session, config, plan_for(config, index)))

            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        else:
            slots = asyncio.Semaphore(config.concurrency)
            tasks: set[asyncio.Task[None]] = set()

            async def one(plan: Plan) -> None:
                try:
                    record(await run_one(session, config, plan))
                finally:
                    slots.release()

            for index in counter:
                due = run.started + index / config.rate
                delay = due - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                if not keep_going():
                    break
                await slots.acquire()
                lag = time.monotonic() - due
                run.max_start_lag = max(run.max_start_lag, lag)
                run.late_starts += lag > 0.05
                task = asyncio.create_task(one(plan_for(config, index)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)


# -- what the daemon says about itself -----------------------------------------------------------

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metrics:
    """A parsed Prometheus text page: {(sample name, sorted labels): value}."""

    samples: dict[tuple[str, Labels], float]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(samples)

    def get(self, name: str, **labels: str) -> float:
        """Sum of `name` over every series whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (sample, items), value in self.samples.items() if sample == name and wanted <= set(items))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out: Counter[str] = Counter()
        wanted = set(labels.items())
        for (sample, items), value in self.samples.items():
            if sample == name and wanted <= set(items):
                out[dict(items).get(label, "")] += value
        return dict(out)


async def scrape(session: aiohttp.ClientSession, url: str) -> Metrics:
    async with session.get(url) as response:
        response.raise_for_status()
        return Metrics.parse(await response.text())


def read_access_log(path: Path) -> list[dict[str, Any]]:
    """The daemon's access lines (JSON objects, one per line) from its stdout."""
    lines: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


# -- a process seen from /proc -------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    t: float  # time.monotonic()
    rss_bytes: int
    cpu_s: float  # user + system
    fds: int
    sockets: int
    threads: int


def proc_sample(pid: int) -> ProcSample:
    now = time.monotonic()
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) * 1024
    threads = int(fields["Threads"])
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / _CLK_TCK
    fds = sockets = 0
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        fds += 1
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                sockets += 1
    return ProcSample(now, rss, cpu, fds, sockets, threads)


# -- small statistics ----------------------------------------------------------------------------

def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); nan for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope
