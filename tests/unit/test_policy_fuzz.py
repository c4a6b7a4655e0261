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

import yaml
from hypothesis import HealthCheck, given, settings
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
def test_mutated_default_policy_is_a_policy_or_a_policy_error(data: st.DataObject) -> None:
    mutated = copy.deepcopy(DEFAULT_POLICY)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = _mutate(mutated, data.draw)
    accepts_or_rejects_cleanly(yaml.safe_dump(mutated, sort_keys=False))
    with contextlib.suppress(PolicyError):
        policy_from_mapping(mutated, env=ENV)
