"""The offline demo: fake providers the daemon starts itself, as the policy's `mock:` blocks ask.

Only loopback base URLs may be mocked (the loader enforces it), so a mock can
never impersonate a real provider on the network.
"""

from __future__ import annotations

import logging

from yarl import URL

from router.mock import FakeProvider, Ok, RandomFaults
from router.policy.model import Policy

log = logging.getLogger("router.demo")


async def start_demo_providers(policy: Policy) -> list[FakeProvider]:
    started: list[FakeProvider] = []
    for provider in policy.providers.values():
        spec = provider.mock
        if spec is None:
            continue
        url = URL(provider.base_url)
        base = Ok(content=spec.content, delay_s=spec.latency_s, chunks=spec.chunks, interval_s=spec.interval_s)
        fault = RandomFaults(dict(spec.error_rates), retry_after=spec.retry_after, seed=spec.seed, base=base) \
            if spec.error_rates else base
        fake = FakeProvider(provider.name, prefix=url.path or "/v1", max_hits=1000)
        fake.set_default(fault)
        try:
            await fake.start(url.host or "127.0.0.1", url.port or 80)
        except OSError as exc:
            await stop_demo_providers(started)
            raise SystemExit(f"cannot start the demo provider {provider.name!r} on {url}: {exc}") from None
        rates = ", ".join(f"{k}={v:g}" for k, v in spec.error_rates.items()) or "no faults"
        log.info("demo provider %r at %s (%s)", provider.name, fake.base_url, rates)
        started.append(fake)
    return started


async def stop_demo_providers(providers: list[FakeProvider]) -> None:
    for fake in providers:
        await fake.stop()
