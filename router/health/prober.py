"""Out-of-band health probes: an ejected provider with a `health_probe` is probed every `interval_s`,
so finding out that it is back costs no client request.

The breakers of such a provider are `probed` (health/breaker.py): they never let a client request
through half-open. While any of them is open, the prober sends one probe per interval (the first
one `interval_s` after the ejection): a success closes them all and gives each target a fair
trial; a failure keeps them open. With Redis, one replica per interval wins the right to probe
(`StateBackend.claim`); it publishes a recovery that the others adopt (health/ledger.py), so the
whole fleet sends at most one probe per interval per provider.

The probe itself is injected (`check`, upstream/probe.py in the router), so this module does no I/O
of its own and tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from router.clock import Clock
from router.health.ledger import Ledger
from router.observe.observer import Observer
from router.policy.model import Policy, Provider

log = logging.getLogger("router.health")

TICK_S = 0.25  # how often ejections are looked for; a probe is due at most this late

Check = Callable[[Provider], Awaitable[bool]]


class HealthProber:
    __slots__ = ("_check", "_clock", "_current", "_due", "_observer", "_running")

    def __init__(self, current: Callable[[], tuple[Policy, Ledger]], check: Check, *, observer: Observer,
                 clock: Clock) -> None:
        self._current = current  # the live policy and ledger (they change on reload)
        self._check = check
        self._observer = observer
        self._clock = clock
        self._due: dict[str, float] = {}  # provider -> when its next probe is due
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Probe until cancelled."""
        try:
            while True:
                try:
                    await self.tick()
                except Exception:  # a bug here must not end probing for the process's life
                    log.exception("health prober: tick failed")
                await asyncio.sleep(TICK_S)
        finally:
            for task in self._running.values():
                task.cancel()

    async def tick(self) -> None:
        """Start the probes that are due (each runs in its own task)."""
        policy, ledger = self._current()
        now = self._clock.monotonic()
        for name, provider in policy.providers.items():
            probe = provider.health_probe
            if probe is None:
                continue
            if not any(breaker.open_until is not None for _, breaker in ledger.provider_breakers(name)):
                self._due.pop(name, None)
                continue
            due = self._due.get(name)
            if due is None:  # just ejected: the first probe after one interval
                self._due[name] = now + probe.interval_s
                continue
            if now < due or name in self._running:
                continue
            self._due[name] = now + probe.interval_s
            if not await ledger.backend.claim("probe:" + name, probe.interval_s):
                continue  # another replica probes this interval
            task = asyncio.create_task(self._probe(name, provider), name=f"router-probe-{name}")
            self._running[name] = task
            task.add_done_callback(lambda _, key=name: self._running.pop(key, None))

    async def _probe(self, name: str, provider: Provider) -> None:
        ok = await self._check(provider)
        self._observer.health_probed(name, ok)
        _, ledger = self._current()
        now = self._clock.monotonic()
        if ok:
            for target, state in ledger.recovered(name, now):
                self._observer.breaker_changed(name, target, state)
        else:
            ledger.probe_failed(name, now)
