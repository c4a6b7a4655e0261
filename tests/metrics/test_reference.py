"""The metrics reference: the README's table lists every metric, and docs/metrics.md's embedded-exporter
example runs."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import router.observe.prometheus
from router.observe.prometheus import PrometheusObserver
from tests.metrics.helpers import Scrape

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
REPO = REFERENCE.parents[1]
README = REPO / "README.md"


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _section() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def test_the_table_lists_every_exported_metric_with_its_type() -> None:
    rows = dict(re.findall(r"^\| `(llm_router_\w+)` \| (\w+) \|", README.read_text(encoding="utf-8"), re.MULTILINE))
    exported = {}
    for name, kind in Scrape.of(PrometheusObserver().registry).types.items():
        exported[f"{name}_total" if kind == "counter" else name] = kind
    assert rows == exported


@pytest.mark.slow
async def test_the_embedded_exporter_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    source = re.search(r"```python\n(.*?)```", _section(), re.DOTALL)
    assert source is not None
    started: list[Any] = []
    real = router.observe.prometheus.start_exporter

    def on_a_free_port(port: int, registry: Any = None, addr: str = "127.0.0.1") -> Any:
        assert port == 9464
        started.append(real(0, registry, addr))
        return started[-1]

    monkeypatch.setattr(router.observe.prometheus, "start_exporter", on_a_free_port)
    monkeypatch.chdir(REPO)
    namespace: dict[str, Any] = {}
    exec(compile(source.group(1), str(REFERENCE), "exec"), namespace)
    server, thread = started[0]
    try:
        port = server.server_address[1]
        scrape = Scrape.parse(await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}/metrics"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        await namespace["router"].aclose()
    assert namespace["router"].observer is namespace["observer"]
    assert scrape.get("llm_router_build_info") == 1
    assert "llm_router_requests" in scrape.types
