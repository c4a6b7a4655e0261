"""Routing policy: frozen value objects and the loader that validates YAML into them."""

from router.policy.loader import load_policy, parse_policy, policy_from_mapping
from router.policy.model import (
    MODEL_PLACEHOLDER,
    BreakerPolicy,
    Client,
    ClientLimits,
    MockSpec,
    Policy,
    Provider,
    ProviderLimits,
    RetryBudget,
    RetryPolicy,
    Route,
    ServerPolicy,
    StatePolicy,
    Target,
    Timeouts,
)

__all__ = [
    "MODEL_PLACEHOLDER",
    "BreakerPolicy",
    "Client",
    "ClientLimits",
    "MockSpec",
    "Policy",
    "Provider",
    "ProviderLimits",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "ServerPolicy",
    "StatePolicy",
    "Target",
    "Timeouts",
    "load_policy",
    "parse_policy",
    "policy_from_mapping",
]
