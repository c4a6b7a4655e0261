"""One simulation: the policy's real `Router` on virtual time, its providers played by the fault profile.

`simulate` builds one `ProviderModel` per provider of the policy (the profile's faults, or the
instant provider for one the profile does not name), puts them behind the real transport
(client.py), runs the offered load on a `VirtualTimeLoop` and hands back the `Outcomes`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Mapping
from dataclasses import replace
from types import MappingProxyType

from router.health.prober import Check
from router.policy import load_policy
from router.policy.model import Policy, Provider, Route, StatePolicy
from router.router import Router
from router.sim.client import SimClient, SimTransport
from router.sim.driver import Outcomes, Schedule, offer
from router.sim.loop import LoopClock, run_virtual
from router.sim.profile import FaultProfile
from router.sim.provider import ProviderModel

DEFAULT_SEED = 1
_PROXY_VARIABLES = frozenset({"https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"})


class PlaceholderEnv(Mapping[str, str]):
    """The environment a simulated policy is loaded with: every key variable "is set" (nothing is sent
    anywhere, so no real key is needed), and no proxy is (nothing connects anywhere either)."""

    def __getitem__(self, key: str) -> str:
        if key in _PROXY_VARIABLES:
            raise KeyError(key)
        return "simulated-key"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def load_simulation_policy(path: str) -> tuple[Policy, list[str]]:
    """Load a policy file for simulation (PolicyError as `router check` reports it)."""
    return simulation_policy(load_policy(path, env=PlaceholderEnv()))


def simulation_policy(policy: Policy) -> tuple[Policy, list[str]]:
    """The policy as simulated, and what had to change: one process, so limit and breaker state in memory."""
    notes = []
    if policy.state.backend != "memory":
        notes.append(f"state.backend {policy.state.backend!r} is simulated with the memory backend (one router)")
        policy = replace(policy, state=StatePolicy())
    # No key is sent anywhere: without one, the transport has no secret to look for in every answer.
    providers = {name: replace(p, api_key=None) for name, p in policy.providers.items()}
    return replace(policy, providers=MappingProxyType(providers)), notes


def pick_route(policy: Policy, requested: str | None) -> tuple[str, Route]:
    """The model name to ask for and its route: `requested`, or the policy's first route that is not a glob."""
    if requested is not None:
        route = policy.find_route(requested)
        if route is None:
            raise LookupError(f"no route matches {requested!r}; routes: {', '.join(policy.routes)}")
        return requested, route
    for route in policy.routes.values():
        if not route.is_pattern:
            return route.name, route
    raise LookupError("every route of the policy is a pattern; name a model with --route")


def build_models(policy: Policy, profile: FaultProfile, seed: int) -> dict[str, ProviderModel]:
    return {name: ProviderModel(name, profile.providers.get(name), seed=seed) for name in policy.providers}


def schedule_for(profile: FaultProfile, *, seed: int, requests: int | None = None) -> Schedule:
    """`requests` arrivals at the profile's rate, or as many as its `duration_s` holds."""
    return Schedule.poisson(profile.rate_per_s, stream_percent=profile.stream_percent, seed=seed,
                            duration_s=None if requests is not None else profile.duration_s, count=requests)


def _probe(models: Mapping[str, ProviderModel], origin: float) -> Check:
    """The router's `health_probe` check, answered by the models: healthy unless an outage is in progress."""

    async def check(provider: Provider) -> bool:
        return models[provider.name].healthy(asyncio.get_running_loop().time() - origin)

    return check


def simulate(policy: Policy, profile: FaultProfile, *, seed: int = DEFAULT_SEED, requests: int | None = None,
             model: str | None = None, client: str | None = None) -> Outcomes:
    """Run the whole simulation on virtual time (the policy as returned by `simulation_policy`)."""
    requested, _ = pick_route(policy, model)
    schedule = schedule_for(profile, seed=seed, requests=requests)

    async def main() -> Outcomes:
        loop = asyncio.get_running_loop()
        origin = loop.time()
        models = build_models(policy, profile, seed)
        sim_client = SimClient(models, origin=origin)
        clock = LoopClock(loop)
        transport = SimTransport(policy, sim_client, clock=clock)
        router = Router(policy, transport=transport, clock=clock, rng=random.Random(f"{seed}:router"),
                        health_check=_probe(models, origin))
        try:
            async with router:
                outcomes = await offer(router, schedule, providers=list(policy.providers), model=requested,
                                       client=client, origin=origin)
        finally:
            await transport.aclose()
        outcomes.decisions = {name: dict(m.counts) for name, m in models.items()}
        outcomes.provider_attempts = {name: sum(counts.values()) for name, counts in outcomes.decisions.items()}
        return outcomes

    return run_virtual(main)
