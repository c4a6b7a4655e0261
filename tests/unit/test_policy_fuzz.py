"""Property: whatever the input, the loader returns a Policy or raises PolicyError, nothing else.

A stray TypeError or KeyError from a malformed file would crash a reload
instead of being logged and counted, so this is part of the contract.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from router.errors import PolicyError
from router.policy import Policy, parse_policy, policy_from_mapping

DEFAULT_POLICY = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "policies" / "default.yaml").read_text(encoding="utf-8"))
ENV = {"AIMO_API_KEY": "k1", "WEB_KEY": "k2", "EMPTY": ""}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that steer random text towards the interesting corners of YAML...
YAML_SYNTAX = [
    "\n", "  ", "    ", "\t", "- ", ": ", ":", ",", "{", "}", "[", "]", "'", '"', "#", "&a ", "*a", "<<: ",
    "? ", "|\n", ">\n", "---\n", "...\n", "%YAML 1.1\n", "!!python/object:os.system ", "!!binary ",
    "!!float ", "!!int ", "!!bool ", "!!timestamp ", "!!str ", "!!null ", "!!map ", "!!seq ", "''",
    "!!set ", "!!omap ", "~", "null", "true", "yes", "0x1F", "1e999", ".nan", "-.inf",
    "1_000", "2024-13-45", "2024-01-01", "12:30:00", "\x00", "\ufeff", "é",
]
# ...and of the schema.
SCHEMA_WORDS = [
    "version", "providers", "routes", "clients",
    "base_url", "http://127.0.0.1:9101/v1", "api_key_env", "AIMO_API_KEY", "EMPTY", "targets", "provider",
    "model", "{model}", "priority", "weight", "retry", "max_attempts", "timeouts", "connect_s", "headers",
    "Authorization", "key_env", "key_sha256", "limits", "burst", "requests_per_second", "state", "backend",
    "redis", "url", "server", "port", "demo-primary", "chat", "0", "1", "-1", "1.5", "65536",
]
YAML_TOKENS = YAML_SYNTAX + SCHEMA_WORDS

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["providers", "routes", "base_url", "targets", "model", "provider", "demo-primary",
                     "http://127.0.0.1:1/v1", "redis://x:1", "{model}", "AIMO_API_KEY", "EMPTY", "a" * 64]),
)
keys = st.one_of(st.sampled_from(SCHEMA_WORDS), st.text(max_size=8), st.integers(), st.none(), st.booleans())
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


def accepts_or_rejects_cleanly(text: str) -> None:
    with contextlib.suppress(PolicyError):
        assert isinstance(parse_policy(text, source="fuzz.yaml", env=ENV), Policy)


@FUZZ
@given(st.text(max_size=200))
def test_random_text_is_a_policy_or_a_policy_error(text: str) -> None:
    accepts_or_rejects_cleanly(text)


@FUZZ
@given(st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=3), max_size=40).map("".join))
def test_yaml_ish_text_is_a_policy_or_a_policy_error(text: str) -> None:
    accepts_or_rejects_cleanly(text)


@FUZZ
@given(structures)
@pytest.mark.slow
def test_random_structures_are_a_policy_or_a_policy_error(data: Any) -> None:
    accepts_or_rejects_cleanly(yaml.safe_dump(data, sort_keys=False))
    with contextlib.suppress(PolicyError):
        policy_from_mapping(data, env=ENV)


def _mutate(data: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
    """Walk a random path into `data`, then delete, retype, rename or add a key there."""
    node = data
    while True:
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if not children or draw(st.integers(0, 3)) == 0:
            break
        key, child = draw(st.sampled_from(children))
        if not isinstance(child, dict | list) or not child:
            break
        node = child
    action = draw(st.sampled_from(["delete", "retype", "rename", "add"]))
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node, key=str)))
        if action == "delete":
            del node[key]
        elif action == "retype":
            node[key] = draw(structures)
        elif action == "rename":
            node[draw(keys)] = node.pop(key)
        else:
            node[draw(st.sampled_from(SCHEMA_WORDS) | st.text(max_size=8))] = draw(structures)
    elif isinstance(node, list) and node:
        index = draw(st.integers(0, len(node) - 1))
        if action == "delete":
            del node[index]
        else:
            node[index] = draw(structures)
    return data


@FUZZ
@given(st.data())
@pytest.mark.slow
def test_mutated_default_policy_is_a_policy_or_a_policy_error(data: st.DataObject) -> None:
    mutated = copy.deepcopy(DEFAULT_POLICY)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = _mutate(mutated, data.draw)
    accepts_or_rejects_cleanly(yaml.safe_dump(mutated, sort_keys=False))
    with contextlib.suppress(PolicyError):
        policy_from_mapping(mutated, env=ENV)


# --- every key, every shipped policy, values at the edges ---------------------------------------

REPO = Path(__file__).resolve().parents[2]
# A policy that sets every key the loader knows, so mutations reach every parser.
FULL_POLICY: dict[str, Any] = {
    "version": 1,
    "providers": {
        "aimo": {"base_url": "https://devnet.aimo.network/api/v1", "api_key_env": "AIMO_API_KEY",
                 "headers": {"X-Team": "search"}, "timeouts": {"connect_s": 5, "first_byte_s": 30, "idle_s": 30},
                 "limits": {"requests_per_minute": 600, "tokens_per_minute": 400000},
                 "breaker": {"consecutive_failures": 5, "base_ejection_s": 5, "max_ejection_s": 30},
                 "max_connections": 100, "supports_prefill": False, "allow_link_local": False},
        "demo": {"base_url": "http://127.0.0.1:9101/v1", "supports_prefill": True,
                 "mock": {"error_rates": {503: 0.3, "reset": 0.1}, "retry_after": 1, "latency_s": 0,
                          "chunks": 5, "interval_s": 0, "content": "hi", "seed": 7}},
        "imds": {"base_url": "http://169.254.169.254/v1", "allow_link_local": True},
    },
    "routes": {
        "chat": {"targets": [{"provider": "aimo", "model": "8W7X:deepseek-chat-v3", "priority": 0, "weight": 2},
                             {"provider": "demo", "model": "m", "priority": 1, "weight": 1}],
                 "retry": {"max_attempts": 3, "max_attempts_per_target": 2, "base_interval_s": 0.25,
                           "max_interval_s": 8, "wait_for_preferred_s": 5},
                 "deadline_s": 60, "ttft_s": 10, "strategy": "least_busy"},
        "*:deepseek-chat-v3": {"targets": [{"provider": "aimo", "model": "{model}"}]},
    },
    "clients": [
        {"name": "web", "key_env": "WEB_KEY", "routes": ["chat"],
         "limits": {"requests_per_second": 20, "burst": 40, "tokens_per_minute": 200000, "queue_s": 1}},
        {"name": "ops", "key_sha256": "a" * 64},
    ],
    "retry_budget": {"percent": 20, "min_per_second": 5, "window_s": 10},
    "state": {"backend": "redis", "url": "redis://127.0.0.1:6379/0", "key_prefix": "llm_router:", "timeout_ms": 50,
              "on_error": "local", "replicas": 2},
    "server": {"host": "127.0.0.1", "port": 8080, "max_body_bytes": 4194304, "drain_timeout_s": 30},
}
SHIPPED = {path.name: yaml.safe_load(path.read_text(encoding="utf-8"))
           for path in [*(REPO / "policies").rglob("*.yaml"), REPO / "deploy" / "policy.example.yaml"]
           if REPO / "policies" / "faults" not in path.parents}  # fault profiles: tests/sim/
SEEDS = {"full": FULL_POLICY, **SHIPPED}
SHIPPED_ENV = {**ENV, "ASI1_API_KEY": "k3", "ROUTER_CLIENT_WEB_KEY": "k4", "ROUTER_CLIENT_BATCH_KEY": "k5"}
# Values at the edges of what parsers accept, by the type they replace, plus the addresses the
# base_url check refuses and strings no URL parser expects.
STRING_EDGES = st.sampled_from([
    "", " ", "0", "1.5", "true", "{model}", "*", "a" * 64, "A" * 63, "\ud800", "\x85", "é" * 3, "x" * 300,
    "http://169.254.169.254/v1", "http://[fe80::1%25eth0]/v1", "http://2852039166/v1", "http://0xa9.0xfe.43518/v1",
    "http://metadata.google.internal./v1", "http://[::ffff:100.100.100.200]/v1", "http://a\x00b/v1",
    "http://[fe80::1%00]/v1", "http://[::1/v1", "https://u:p@h/v1", "https://h/v1?x#y", "redis://:pw@h:1/0",
])
NUMBER_EDGES = st.sampled_from([0, -1, 1, 0.5, 1e308, -0.0, 2**63, 10**400, float("nan"), float("inf"), True])
OTHER_EDGES = st.sampled_from([None, True, False, [], {}, [[]], {"": None}, "", 0])


def edge_for(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, str):
        return STRING_EDGES | OTHER_EDGES
    if isinstance(value, int | float) and not isinstance(value, bool):
        return NUMBER_EDGES | OTHER_EDGES
    return OTHER_EDGES | structures


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `data` (mapping keys and list indexes)."""
    found = [prefix]
    children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, child in children:
        found.extend(_paths(child, (*prefix, key)))
    return found


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _top_level_keys(data: Any) -> set[str]:
    from router.policy._fields import join

    return {join("", key) for key in data} if isinstance(data, dict) else set()


def assert_clean_error(error: PolicyError, document: Any) -> None:
    """A PolicyError about a mapping document names where, in that document, the problem is."""
    assert str(error).startswith("fuzz.yaml: ")
    assert "Traceback" not in str(error)
    if not isinstance(document, dict) or not error.path:
        # Only whole-document problems have no key path: YAML syntax (with a line number), an empty
        # or non-mapping document, or a missing required top-level section.
        assert not isinstance(document, dict) or "invalid YAML" in error.problem \
            or error.problem.startswith("the policy"), str(error)
        return
    roots = _top_level_keys(document) | {"providers", "routes"}  # the required ones may be missing
    assert any(error.path == root or error.path.startswith((f"{root}.", f"{root}[")) for root in roots), \
        (error.path, sorted(roots))


def load_mutant(document: Any) -> None:
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    for attempt in (lambda: parse_policy(text, source="fuzz.yaml", env=SHIPPED_ENV),
                    lambda: policy_from_mapping(document, source="fuzz.yaml", env=SHIPPED_ENV)):
        try:
            assert isinstance(attempt(), Policy)
            event("a policy")
        except PolicyError as error:
            assert_clean_error(error, document)
            event("a PolicyError with a key path" if error.path else "a PolicyError about the whole document")


def test_the_seed_policies_are_valid() -> None:
    for name, document in SEEDS.items():
        assert isinstance(policy_from_mapping(document, env=SHIPPED_ENV), Policy), name


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), st.data())
@pytest.mark.slow
def test_edge_values_anywhere_in_a_valid_policy_give_a_policy_or_an_error_at_a_key_path(
        seed: str, data: st.DataObject) -> None:
    document = copy.deepcopy(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(document)[1:]))
        # A copy: the edge values include lists and mappings that later mutations could change in place.
        document = _set(document, path, copy.deepcopy(data.draw(edge_for(_get(document, path)))))
    load_mutant(document)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), st.data())
@pytest.mark.slow
def test_structural_mutations_of_every_seed_give_a_policy_or_an_error_at_a_key_path(
        seed: str, data: st.DataObject) -> None:
    mutated = copy.deepcopy(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = _mutate(mutated, data.draw)
    load_mutant(mutated)
