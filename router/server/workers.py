"""One worker of `router serve --workers N`: its identity and the fleet-wide /metrics view.

Every worker listens on the shared port (SO_REUSEPORT: the kernel spreads
connections) and on a private Unix socket in the supervisor's directory. A scrape
of /metrics reaches one worker, which collects its siblings' own metrics over
their sockets and serves them all, each sample labelled `worker="<index>"`, so one
scrape target covers every worker (`sum without (worker)` gives the totals).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger("router.server")

# A sibling that does not answer within this is left out of the scrape (and logged), not waited for.
SIBLING_TIMEOUT_S = 1.0
LOCAL_ONLY = "local"  # /metrics?scope=local: this worker only (what siblings ask each other)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    index: int
    count: int
    directory: str

    def socket_path(self, index: int | None = None) -> str:
        return os.path.join(self.directory, f"worker-{self.index if index is None else index}.sock")

    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


async def fleet_metrics(worker: WorkerInfo, own: bytes) -> bytes:
    """This worker's exposition merged with every sibling's, each sample labelled by worker."""
    texts = {worker.index: own.decode()}
    fetched = await asyncio.gather(*(_fetch(worker.socket_path(i)) for i in worker.siblings()))
    for index, text in zip(worker.siblings(), fetched, strict=True):
        if text is not None:
            texts[index] = text
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(texts))
    return generate_latest(registry)


async def _fetch(path: str) -> str | None:
    try:
        async with aiohttp.UnixConnector(path=path) as connector, \
                aiohttp.ClientSession(connector=connector) as session, \
                asyncio.timeout(SIBLING_TIMEOUT_S), \
                session.get(f"http://worker/metrics?scope={LOCAL_ONLY}") as response:
            if response.status == 200:
                return await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("metrics: worker socket %s did not answer (%s); scrape is partial", path, type(exc).__name__)
    return None


class _Merged:
    """A collector yielding the parsed families of several workers under one name each."""

    def __init__(self, texts: dict[int, str]) -> None:
        self._texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index, text in sorted(self._texts.items()):
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                            family.unit)
                merged.samples.extend(_labelled(family.samples, str(index)))
        yield from families.values()


def _labelled(samples: Iterable[Sample], worker: str) -> Iterator[Sample]:
    for sample in samples:
        yield sample._replace(labels={**sample.labels, "worker": worker})
