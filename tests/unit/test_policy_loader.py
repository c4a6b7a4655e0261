"""Behaviour of the policy loader: YAML in, frozen Policy out, or one precise PolicyError."""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from router.errors import PolicyError
from router.policy import (
    Client,
    ClientLimits,
    MockSpec,
    Policy,
    Provider,
    Route,
    Target,
    load_policy,
    parse_policy,
    policy_from_mapping,
)
from router.policy._fields import MOCK_FAULTS

REPO = Path(__file__).resolve().parents[2]
# Fields the loader fills itself (from a mapping key, the environment or the file name), never YAML keys.
# Client.name is a real key (`clients[].name`), unlike the names of providers and routes.
COMPUTED_FIELDS = {
    "Provider": {"name", "api_key", "proxy"}, "Route": {"name"}, "Client": {"key"}, "Policy": {"source"},
    "AdminPolicy": {"key"},
}


def is_computed(cls: type, field_name: str) -> bool:
    return field_name in COMPUTED_FIELDS.get(cls.__name__, set())
AIMO_MODEL = "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3"

BASE: dict[str, Any] = {
    "providers": {
        "aimo": {"base_url": "https://devnet.aimo.network/api/v1"},
        "asi1": {"base_url": "https://api.asi1.ai/v1"},
    },
    "routes": {
        "chat": {"targets": [{"provider": "aimo", "model": AIMO_MODEL},
                             {"provider": "asi1", "model": "asi1-mini"}]},
    },
}


def variant(*changes: tuple[str, Any], base: Mapping[str, Any] = BASE) -> dict[str, Any]:
    """A deep copy of `base` with `("a.b.0.c", value)` set; missing mappings are created."""
    data = copy.deepcopy(dict(base))
    for dotted, value in changes:
        *parents, last = [int(part) if part.isdigit() else part for part in dotted.split(".")]
        node: Any = data
        for part in parents:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})
        node[last] = value
    return data


def parse(data: Mapping[str, Any] | str, env: Mapping[str, str] | None = None) -> Policy:
    text = data if isinstance(data, str) else yaml.safe_dump(dict(data), sort_keys=False)
    return parse_policy(text, source="test.yaml", env=env or {})


def problem(data: Mapping[str, Any] | str, env: Mapping[str, str] | None = None) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        parse(data, env)
    return caught.value


# --- the happy path and defaults ------------------------------------------------


def test_minimal_policy_gets_every_default() -> None:
    policy = parse(BASE)

    assert policy.version == 1
    assert policy.source == "test.yaml"
    assert policy.clients == ()
    assert policy.providers["aimo"] == Provider(name="aimo", base_url="https://devnet.aimo.network/api/v1")
    assert policy.routes["chat"] == Route(name="chat", targets=(
        Target(provider="aimo", model=AIMO_MODEL), Target(provider="asi1", model="asi1-mini")))
    assert policy.retry_budget == type(policy.retry_budget)()
    assert policy.state == type(policy.state)()
    assert policy.server == type(policy.server)()


def _plain_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {fld.name: _plain_default(getattr(value, fld.name))
                for fld in dataclasses.fields(value) if not is_computed(type(value), fld.name)}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _optional_block(cls: type, field_name: str) -> type | None:
    """The dataclass of a `Block | None` field (a block that is off unless written), else None."""
    hint = typing.get_type_hints(cls)[field_name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        blocks = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
        return blocks[0] if blocks else None
    return None


def _every_field(cls: type, **required: Any) -> tuple[dict[str, Any], Any]:
    """Every YAML key of `cls` written with the model's default, and the object the loader should build.

    Optional blocks (default null) are written out in full too, so their keys are exercised.
    """
    data: dict[str, Any] = {}
    # `required` maps a field to (YAML value, model value); computed fields only have a model value.
    expected = {name: pair[1] for name, pair in required.items() if is_computed(cls, name)}
    for fld in dataclasses.fields(cls):
        if not fld.init or is_computed(cls, fld.name):  # derived, never written in YAML
            continue
        block = _optional_block(cls, fld.name)
        if fld.name in required:
            data[fld.name], expected[fld.name] = required[fld.name]
        elif block is not None:
            data[fld.name], expected[fld.name] = _every_field(block)
        else:
            default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
            data[fld.name] = _plain_default(default)
    return data, cls(**expected)


def test_every_model_field_is_accepted_with_its_default_value() -> None:
    # If model.py grows a field the loader does not know, this fails with "unknown key".
    target, target_obj = _every_field(Target, provider=("p", "p"), model=("m", "m"))
    route, route_obj = _every_field(Route, name=("r", "r"), targets=([target], (target_obj,)))
    provider, provider_obj = _every_field(Provider, name=("p", "p"),
                                          base_url=("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"))
    client, client_obj = _every_field(Client, name=("c", "c"), key_sha256=("a" * 64, "a" * 64))
    data, _ = _every_field(Policy, providers=({"p": provider}, {"p": provider_obj}),
                           routes=({"r": route}, {"r": route_obj}), clients=([client], (client_obj,)))

    policy = parse(data)

    assert policy.providers["p"] == provider_obj
    assert policy.routes["r"] == route_obj
    assert policy.clients == (client_obj,)


def test_routes_may_be_written_before_the_providers_they_use() -> None:
    data = {"routes": BASE["routes"], "providers": BASE["providers"]}
    assert list(parse(data).routes) == ["chat"]


def test_null_or_empty_block_means_all_defaults() -> None:
    policy = parse(variant(("providers.aimo.timeouts", None), ("retry_budget", {}), ("clients", None)))
    assert policy.providers["aimo"].timeouts == type(policy.providers["aimo"].timeouts)()
    assert policy.clients == ()


def test_policy_from_mapping_validates_a_plain_dict() -> None:
    policy = policy_from_mapping(BASE, source="in-code", env={})
    assert policy.source == "in-code"
    with pytest.raises(PolicyError, match="must be a mapping"):
        policy_from_mapping(["not", "a", "mapping"])


# --- error format and order ----------------------------------------------------


def test_error_names_file_key_path_and_problem() -> None:
    error = problem(variant(("routes.chat.retry", {"max_attempts": 0})))

    assert str(error) == "test.yaml: routes.chat.retry.max_attempts: must be >= 1, got 0"
    assert error.source == "test.yaml"
    assert error.path == "routes.chat.retry.max_attempts"
    assert error.problem == "must be >= 1, got 0"


def test_first_problem_in_file_order_is_reported() -> None:
    text = """
providers:
  aimo: {base_url: https://a.example/v1, max_connections: 0}
routes:
  chat: {targets: [{provider: aimo, model: m}], deadline_s: -1}
"""
    assert problem(text).path == "providers.aimo.max_connections"
    fixed = text.replace("max_connections: 0", "max_connections: 1")
    assert problem(fixed).path == "routes.chat.deadline_s"


def test_shape_problems_are_reported_before_reference_problems() -> None:
    data = variant(("routes.chat.targets.0.provider", "nope"), ("server", {"port": -1}))
    assert problem(data).path == "server.port"


# --- YAML itself ---------------------------------------------------------------


def test_yaml_syntax_error_reports_line_number() -> None:
    text = "providers:\n  aimo:\n    base_url: [unclosed\nroutes: {}\n"
    error = problem(text)
    assert str(error).startswith("test.yaml: invalid YAML at line ")
    assert re.search(r"line [34]\b", str(error))


def test_tab_indentation_is_a_syntax_error_with_line() -> None:
    assert "line 2" in str(problem("providers:\n\taimo: {}\n"))


def test_empty_file_is_rejected() -> None:
    for text in ("", "# only a comment\n", "---\n"):
        assert "empty" in str(problem(text)) or "got null" in str(problem(text))


@pytest.mark.parametrize("text", ["- providers\n", "42\n", "null\n", "just a string\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert "must be a mapping" in str(problem(text))


@pytest.mark.parametrize(("text", "path", "lines"), [
    ("version: 1\nversion: 1\n", "version", "lines 1 and 2"),
    ("providers:\n  a:\n    base_url: http://x\n    base_url: http://y\n",
     "providers.a.base_url", "lines 3 and 4"),
    ("routes:\n  c:\n    targets:\n      - {provider: a, model: m, model: n}\n",
     "routes.c.targets[0].model", "lines 4 and 4"),
    ("providers: {}\nproviders: {}\n", "providers", "lines 1 and 2"),
])
def test_duplicate_key_is_rejected_with_its_path(text: str, path: str, lines: str) -> None:
    error = problem(text)
    assert error.path == path
    assert "duplicate key" in error.problem
    assert lines in error.problem


def test_first_duplicate_key_in_the_file_is_reported() -> None:
    text = "providers:\n  a: {base_url: http://x, base_url: http://y}\nroutes:\n  r: {}\n  r: {}\n"
    assert problem(text).path == "providers.a.base_url"
    text = "providers:\n  a: {x: 1}\n  a: {}\nroutes:\n  r: {deadline_s: 1, deadline_s: 2}\n"
    assert problem(text).path == "providers.a"


def test_yaml_anchors_and_merge_keys_still_work() -> None:
    text = """
x-timeouts: &fast {connect_s: 1, first_byte_s: 2, idle_s: 3}
"""
    # Unknown top-level keys are errors, so anchors must live inside known keys.
    assert "unknown key `x-timeouts`" in str(problem(text))
    text = """
providers:
  a: &provider
    base_url: http://127.0.0.1:1/v1
    timeouts: &fast {connect_s: 1, first_byte_s: 2, idle_s: 3}
  b:
    <<: *provider
    base_url: http://127.0.0.1:2/v1
routes:
  c: {targets: [{provider: a, model: m}, {provider: b, model: m}]}
"""
    policy = parse(text)
    assert policy.providers["b"].timeouts.idle_s == 3.0
    assert policy.providers["b"].base_url == "http://127.0.0.1:2/v1"


def test_unsafe_yaml_tags_are_rejected() -> None:
    error = problem("!!python/object/apply:os.system ['echo owned']\n")
    assert "invalid YAML" in str(error)


@pytest.mark.parametrize("text", [
    "version: 2024-13-45\n", "version: !!int ''\n", "!!float ''\n", "version: !!bool maybe\n",
    "version: !!timestamp soon\n", "version: !!int abc\n",
])
def test_malformed_explicitly_tagged_scalar_is_a_policy_error(text: str) -> None:
    # Found by fuzzing: PyYAML's own constructors raise IndexError, KeyError, ... on these.
    assert "invalid YAML value" in str(problem(text))


# --- unknown keys ------------------------------------------------------------------


@pytest.mark.parametrize(("dotted", "typo", "suggested"), [
    ("", "provider", "providers"),
    ("", "retry_budjet", "retry_budget"),
    ("providers.aimo", "base_ur", "base_url"),
    ("providers.aimo", "api_key_enviroment", "api_key_env"),
    ("providers.aimo.timeouts", "conect_s", "connect_s"),
    ("providers.aimo.breaker", "max_ejection", "max_ejection_s"),
    ("providers.aimo.limits", "requests_per_min", "requests_per_minute"),
    ("routes.chat", "retries", "retry"),
    ("routes.chat", "deadline", "deadline_s"),
    ("routes.chat.retry", "max_attempt", "max_attempts"),
    ("routes.chat.targets.0", "wieght", "weight"),
    ("state", "backnd", "backend"),
    ("server", "Port", "port"),
])
def test_unknown_key_is_rejected_with_suggestion(dotted: str, typo: str, suggested: str) -> None:
    data = variant((f"{dotted}.{typo}" if dotted else typo, 1))
    error = problem(data)
    assert error.path == (f"{dotted}.{typo}" if dotted else typo).replace(".0.", "[0].")
    assert error.problem == f"unknown key `{typo}` (did you mean `{suggested}`?)"


def test_unknown_client_key_is_rejected_with_suggestion() -> None:
    data = variant(("clients", [{"name": "web", "key_sha256": "a" * 64, "limits": {"rps": 1}}]))
    error = problem(data)
    assert error.path == "clients[0].limits.rps"
    assert error.problem.startswith("unknown key `rps`")


def test_unknown_key_without_close_match_lists_expected_keys() -> None:
    error = problem(variant(("server.zzz", 1)))
    assert ("expected one of `admin`, `drain_timeout_s`, `event_loop`, `head_timeout_s`, `host`, `keepalive_s`, "
            "`max_body_bytes`, `max_connections`, `port`") in error.problem


def test_api_key_cannot_be_written_in_the_file() -> None:
    error = problem(variant(("providers.aimo.api_key", "sk-secret")))
    assert error.path == "providers.aimo.api_key"
    assert "unknown key" in error.problem
    assert "sk-secret" not in str(error)


def test_non_string_keys_are_rejected() -> None:
    assert "keys must be strings" in str(problem("providers: {a: {base_url: http://x, 1: 2}}\n"))


# --- types ---------------------------------------------------------------------------


@pytest.mark.parametrize(("dotted", "value", "message"), [
    ("routes.chat.retry.max_attempts", True, "must be an integer, got true (a boolean)"),
    ("routes.chat.deadline_s", False, "must be a number, got false (a boolean)"),
    ("routes.chat.retry.max_attempts", 1.5, "must be an integer, got 1.5"),
    ("routes.chat.retry.max_attempts", 2.0, "must be an integer, got 2.0"),
    ("routes.chat.retry.max_attempts", "3", 'must be an integer, got "3"'),
    ("routes.chat.deadline_s", "60", 'must be a number, got "60"'),
    ("routes.chat.deadline_s", float("inf"), "must be a finite number"),
    ("routes.chat.deadline_s", float("nan"), "must be a finite number"),
    ("routes.chat.targets.0.model", 12, "must be a string, got 12"),
    ("routes.chat.targets.0.model", "", "must not be empty"),
    ("routes.chat.targets.0.model", None, "must be a string, got null"),
    ("providers.aimo.supports_prefill", "yes please", "must be true or false"),
    ("server.host", ["a"], "must be a string, got a list"),
    ("providers.aimo.timeouts", [1, 2], "must be a mapping, got a list"),
])
def test_wrong_types_are_rejected(dotted: str, value: Any, message: str) -> None:
    error = problem(variant((dotted, value)))
    assert message in error.problem


def test_number_fields_accept_integers_and_store_floats() -> None:
    policy = parse(variant(("routes.chat.deadline_s", 45), ("providers.aimo.timeouts", {"connect_s": 2})))
    assert policy.routes["chat"].deadline_s == 45.0
    assert isinstance(policy.routes["chat"].deadline_s, float)
    assert isinstance(policy.providers["aimo"].timeouts.connect_s, float)


def test_yaml_booleans_are_accepted_for_boolean_fields() -> None:
    assert parse("providers: {a: {base_url: http://x, supports_prefill: yes}}\n"
                 "routes: {c: {targets: [{provider: a, model: m}]}}\n").providers["a"].supports_prefill


# --- ranges --------------------------------------------------------------------------


@pytest.mark.parametrize(("dotted", "value", "message"), [
    ("providers.aimo.timeouts.connect_s", 0, "must be > 0, got 0"),
    ("providers.aimo.timeouts.first_byte_s", -1, "must be > 0, got -1"),
    ("providers.aimo.timeouts.idle_s", 0.0, "must be > 0, got 0"),
    ("providers.aimo.limits.requests_per_minute", 0, "must be > 0"),
    ("providers.aimo.limits.tokens_per_minute", 0, "must be >= 1, got 0"),
    ("providers.aimo.breaker.consecutive_failures", 0, "must be >= 1, got 0"),
    ("providers.aimo.breaker.base_ejection_s", 0, "must be > 0"),
    ("providers.aimo.max_connections", 0, "must be >= 1, got 0"),
    ("routes.chat.retry.max_attempts", 0, "must be >= 1, got 0"),
    ("routes.chat.retry.max_attempts_per_target", 0, "must be >= 1, got 0"),
    ("routes.chat.retry.base_interval_s", 0, "must be > 0"),
    ("routes.chat.retry.wait_for_preferred_s", -0.5, "must be >= 0, got -0.5"),
    ("routes.chat.deadline_s", 0, "must be > 0"),
    ("routes.chat.ttft_s", 0, "must be > 0"),
    ("routes.chat.targets.0.weight", 0, "must be > 0"),
    ("routes.chat.targets.0.priority", -1, "must be >= 0, got -1"),
    ("routes.chat.targets.0.priority", 0.5, "must be an integer"),
    ("retry_budget.percent", 101, "must be <= 100, got 101"),
    ("retry_budget.percent", -1, "must be >= 0, got -1"),
    ("retry_budget.min_per_second", -1, "must be >= 0"),
    ("retry_budget.window_s", 0, "must be > 0"),
    ("state.timeout_ms", 0, "must be >= 1, got 0"),
    ("state.replicas", 0, "must be >= 1, got 0"),
    ("server.port", 65536, "must be <= 65535, got 65536"),
    ("server.port", -1, "must be >= 0, got -1"),
    ("server.max_body_bytes", 1023, "must be >= 1024, got 1023"),
    ("server.drain_timeout_s", -1, "must be >= 0"),
])
def test_out_of_range_values_are_rejected(dotted: str, value: Any, message: str) -> None:
    error = problem(variant((dotted, value)))
    assert error.path == dotted.replace(".0.", "[0].")
    assert error.problem == message or error.problem.startswith(message)


@pytest.mark.parametrize(("dotted", "value"), [
    ("routes.chat.retry.wait_for_preferred_s", 0),
    ("routes.chat.targets.0.priority", 0),
    ("routes.chat.ttft_s", None),
    ("retry_budget.percent", 0),
    ("retry_budget.percent", 100),
    ("retry_budget.min_per_second", 0),
    ("server.port", 0),
    ("server.port", 65535),
    ("server.max_body_bytes", 1024),
    ("server.drain_timeout_s", 0),
    ("providers.aimo.limits.requests_per_minute", 0.5),
])
def test_boundary_values_are_accepted(dotted: str, value: Any) -> None:
    parse(variant((dotted, value)))


def test_client_limit_ranges_are_enforced() -> None:
    for limits, message in [({"requests_per_second": 0}, "must be > 0"),
                            ({"requests_per_second": 1, "burst": 0}, "must be >= 1, got 0"),
                            ({"tokens_per_minute": 0}, "must be >= 1, got 0"),
                            ({"queue_s": -1}, "must be >= 0, got -1")]:
        data = variant(("clients", [{"name": "web", "key_sha256": "a" * 64, "limits": limits}]))
        assert message in problem(data).problem


def test_max_interval_below_base_interval_is_rejected() -> None:
    error = problem(variant(("routes.chat.retry", {"base_interval_s": 2, "max_interval_s": 1})))
    assert str(error) == "test.yaml: routes.chat.retry.max_interval_s: must be >= base_interval_s (2), got 1"


def test_base_interval_above_default_max_blames_the_key_that_was_written() -> None:
    error = problem(variant(("routes.chat.retry", {"base_interval_s": 10})))
    assert error.path == "routes.chat.retry.base_interval_s"
    assert error.problem == "must be <= max_interval_s (8, the default), got 10"


def test_max_ejection_below_base_ejection_is_rejected() -> None:
    error = problem(variant(("providers.aimo.breaker", {"base_ejection_s": 10, "max_ejection_s": 5})))
    assert error.path == "providers.aimo.breaker.max_ejection_s"
    assert "must be >= base_ejection_s (10), got 5" in error.problem


# --- version, providers, routes --------------------------------------------------


def test_version_defaults_to_1_and_only_1_is_accepted() -> None:
    assert parse(variant(("version", 1))).version == 1
    assert "unsupported policy version 2" in problem(variant(("version", 2))).problem
    assert "must be an integer" in problem(variant(("version", "1"))).problem


@pytest.mark.parametrize("section", ["providers", "routes"])
def test_providers_and_routes_are_required_and_non_empty(section: str) -> None:
    missing = {key: value for key, value in BASE.items() if key != section}
    assert str(problem(missing)) == f"test.yaml: {section}: is required"
    assert "at least one" in problem(variant((section, {}))).problem
    assert "must be a mapping" in problem(variant((section, ["a"]))).problem


def test_provider_needs_a_base_url() -> None:
    error = problem(variant(("providers.aimo", {"api_key_env": None})))
    assert (error.path, error.problem) == ("providers.aimo.base_url", "is required")


def test_base_url_trailing_slash_is_stripped() -> None:
    policy = parse(variant(("providers.aimo.base_url", "https://devnet.aimo.network/api/v1/")))
    assert policy.providers["aimo"].base_url == "https://devnet.aimo.network/api/v1"
    assert policy.providers["aimo"].chat_url == "https://devnet.aimo.network/api/v1/chat/completions"


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/v1", "must be an http:// or https:// URL"),
    ("api.asi1.ai/v1", "must be an http:// or https:// URL"),
    ("https://", "must be an http:// or https:// URL"),
    ("https://exa mple.com", "must be an http:// or https:// URL"),
    ("https://example.com:99999/v1", "is not a valid URL"),
    ("https://user:sk-secret@example.com/v1", "must not contain credentials"),
    ("https://example.com/v1?key=1", "must not contain a query"),
])
def test_invalid_base_url_is_rejected(url: str, message: str) -> None:
    error = problem(variant(("providers.aimo.base_url", url)))
    assert error.path == "providers.aimo.base_url"
    assert message in error.problem
    assert "sk-secret" not in str(error)


def test_provider_name_comes_from_its_key() -> None:
    assert [provider.name for provider in parse(BASE).providers.values()] == ["aimo", "asi1"]


def test_route_name_must_be_a_string() -> None:
    error = problem("providers: {a: {base_url: http://x}}\n"
                    "routes: {1: {targets: [{provider: a, model: m}]}}\n")
    assert "route names must be non-empty strings" in error.problem


# --- secrets -------------------------------------------------------------------------


def test_api_key_is_resolved_from_the_environment_and_never_printed() -> None:
    policy = parse(variant(("providers.aimo.api_key_env", "AIMO_API_KEY")), env={"AIMO_API_KEY": "sk-live-1"})
    provider = policy.providers["aimo"]
    assert provider.api_key == "sk-live-1"
    assert provider.api_key_env == "AIMO_API_KEY"
    assert "sk-live-1" not in repr(policy)


def test_missing_api_key_variable_is_named_in_the_error() -> None:
    error = problem(variant(("providers.aimo.api_key_env", "AIMO_API_KEY")), env={"OTHER": "x"})
    assert str(error) == "test.yaml: providers.aimo.api_key_env: environment variable AIMO_API_KEY is not set"


def test_empty_api_key_variable_counts_as_not_set() -> None:
    error = problem(variant(("providers.aimo.api_key_env", "AIMO_API_KEY")), env={"AIMO_API_KEY": ""})
    assert "environment variable AIMO_API_KEY is not set" in error.problem


def test_api_key_env_must_be_a_variable_name() -> None:
    error = problem(variant(("providers.aimo.api_key_env", "sk-abc def")))
    assert "must be an environment variable name" in error.problem


@pytest.mark.parametrize("path", ["providers.aimo.api_key_env", "clients"])
def test_a_key_pasted_where_a_variable_name_belongs_is_not_echoed(path: str) -> None:
    pasted = "sk-proj-Zq81LmN0pQrStUvWxYz"
    value: Any = pasted if path != "clients" else [{"name": "web", "key_env": pasted}]
    error = problem(variant((path, value)))
    assert error.path in ("providers.aimo.api_key_env", "clients[0].key_env")
    assert "not the key itself" in error.problem
    assert pasted[:8] not in str(error) and pasted[-8:] not in str(error)


def test_a_value_under_a_yaml_tag_is_not_echoed() -> None:
    error = problem("version: !!int sk-proj-Zq81LmN0pQrStUvWxYz\n")
    assert "invalid YAML value (ValueError)" in str(error)
    assert "Zq81LmN0" not in str(error)


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_TEST_AIMO_KEY", "from-os")
    text = yaml.safe_dump(variant(("providers.aimo.api_key_env", "ROUTER_TEST_AIMO_KEY")))
    assert parse_policy(text).providers["aimo"].api_key == "from-os"


# --- headers -------------------------------------------------------------------------


def test_custom_headers_are_kept_read_only() -> None:
    policy = parse(variant(("providers.aimo.headers", {"X-Title": "my app", "HTTP-Referer": "https://x"})))
    headers = policy.providers["aimo"].headers
    assert dict(headers) == {"X-Title": "my app", "HTTP-Referer": "https://x"}
    assert isinstance(headers, MappingProxyType)


@pytest.mark.parametrize("name", ["Authorization", "authorization", "HOST", "Content-Length", "Connection",
                                  "Transfer-Encoding", "keep-alive", "TE", "Upgrade", "Proxy-Authorization"])
def test_reserved_and_hop_by_hop_headers_are_rejected(name: str) -> None:
    error = problem(variant(("providers.aimo.headers", {name: "Bearer sk-secret"})))
    assert error.path == f"providers.aimo.headers.{name}"
    assert f"header `{name}`" in error.problem
    assert "sk-secret" not in str(error)


@pytest.mark.parametrize(("headers", "message"), [
    ({"X-Version": 2}, "must be a string (quote it), got a int"),
    ({"X-A": "1", "x-a": "2"}, "is set twice"),
    ({"Bad Header": "1"}, "is not a valid HTTP header name"),
    ({"X-Inject": "a\r\nHost: evil"}, "must not contain line breaks"),
    ({"X-Bell": "a\x07b"}, "must not contain line breaks or other control characters"),
])
def test_malformed_headers_are_rejected(headers: dict[str, Any], message: str) -> None:
    assert message in problem(variant(("providers.aimo.headers", headers))).problem


# --- mock providers (demo) -------------------------------------------------------------

LOOPBACK = "http://127.0.0.1:9101/v1"


def test_mock_block_configures_a_fake_on_a_loopback_provider() -> None:
    mock = {"error_rates": {429: 0.2, "503": 0.1, "reset": 0.05}, "retry_after": 2, "latency_s": 0.1,
            "chunks": 3, "interval_s": 0.01, "content": "hi", "seed": 7}
    policy = parse(variant(("providers.aimo.base_url", LOOPBACK), ("providers.aimo.mock", mock)))
    spec = policy.providers["aimo"].mock
    assert spec == MockSpec(error_rates=MappingProxyType({"429": 0.2, "503": 0.1, "reset": 0.05}),
                            retry_after="2", latency_s=0.1, chunks=3, interval_s=0.01, content="hi", seed=7)
    assert isinstance(spec.error_rates, MappingProxyType)


def test_mock_is_off_unless_written_and_empty_means_defaults() -> None:
    assert parse(BASE).providers["aimo"].mock is None
    empty = parse(variant(("providers.aimo.base_url", "http://localhost:9/v1"), ("providers.aimo.mock", {})))
    assert empty.providers["aimo"].mock == MockSpec()


@pytest.mark.parametrize("url", ["https://devnet.aimo.network/api/v1", "http://10.0.0.1:9101/v1"])
def test_mock_on_a_non_loopback_provider_is_rejected(url: str) -> None:
    error = problem(variant(("providers.aimo.base_url", url), ("providers.aimo.mock", {})))
    assert error.path == "providers.aimo.mock"
    assert "only a loopback base_url" in error.problem


@pytest.mark.parametrize(("rates", "message"), [
    ({"explode": 0.1}, "unknown fault \"explode\""),
    ({99: 0.1}, "unknown fault 99"),
    ({429: 1.5}, "must be <= 1, got 1.5"),
    ({429: 0.6, "reset": 0.6}, "rates must add up to at most 1, got 1.2"),
    ({429: 0.1, "429": 0.1}, "fault 429 is set twice"),
])
def test_mock_error_rates_are_validated(rates: dict[Any, Any], message: str) -> None:
    error = problem(variant(("providers.aimo.base_url", LOOPBACK), ("providers.aimo.mock.error_rates", rates)))
    assert message in error.problem


def test_every_fault_the_loader_accepts_is_known_to_the_mock_provider() -> None:
    import router.mock as mock
    rates = {name: 0.1 for name in (*MOCK_FAULTS, "429")}
    policy = parse(variant(("providers.aimo.base_url", LOOPBACK), ("providers.aimo.mock.error_rates", rates)))
    spec = policy.providers["aimo"].mock
    assert spec is not None
    mock.RandomFaults(dict(spec.error_rates), retry_after=spec.retry_after)  # raises on an unknown fault


# --- routes and targets --------------------------------------------------------------


def test_target_with_unknown_provider_names_the_target_and_lists_known_providers() -> None:
    error = problem(variant(("routes.chat.targets.1.provider", "asi")))
    assert error.path == "routes.chat.targets[1].provider"
    assert error.problem == "unknown provider `asi` (did you mean `asi1`?); known providers: `aimo`, `asi1`"


def test_model_ids_are_kept_opaque() -> None:
    odd = "pk:vendor/model:v3"
    policy = parse(variant(("routes.chat.targets.0.model", odd),
                           ("routes.chat.targets.1.model", "x/{model}:y")))
    targets = policy.routes["chat"].targets
    assert targets[0].model == odd
    assert targets[1].model == "x/{model}:y"
    assert targets[1].upstream_model("asked") == "x/asked:y"


def test_targets_keep_file_order() -> None:
    targets = [{"provider": "asi1", "model": "z", "priority": 2},
               {"provider": "aimo", "model": "a", "priority": 0},
               {"provider": "asi1", "model": "b", "priority": 1, "weight": 3}]
    policy = parse(variant(("routes.chat.targets", targets)))
    assert [target.model for target in policy.routes["chat"].targets] == ["z", "a", "b"]
    assert policy.routes["chat"].targets[2].weight == 3.0


@pytest.mark.parametrize(("targets", "path", "message"), [
    ([], "routes.chat.targets", "must list at least one target"),
    ({"provider": "aimo"}, "routes.chat.targets", "must be a list of targets"),
    (["aimo"], "routes.chat.targets[0]", "must be a mapping"),
    ([{"provider": "aimo"}], "routes.chat.targets[0].model", "is required"),
    ([{"model": "m"}], "routes.chat.targets[0].provider", "is required"),
])
def test_malformed_targets_are_rejected(targets: Any, path: str, message: str) -> None:
    error = problem(variant(("routes.chat.targets", targets)))
    assert (error.path, error.problem) == (path, message) or (error.path == path and message in error.problem)


def test_route_needs_targets() -> None:
    assert problem(variant(("routes.chat", {"deadline_s": 5}))).path == "routes.chat.targets"


def test_strategy_must_be_known() -> None:
    error = problem(variant(("routes.chat.strategy", "least-busy")))
    assert "must be one of `weighted`, `least_busy`" in error.problem
    assert "did you mean `least_busy`?" in error.problem
    assert parse(variant(("routes.chat.strategy", "least_busy"))).routes["chat"].strategy == "least_busy"


def test_glob_route_names_are_accepted_and_matched() -> None:
    glob_route = {"targets": [{"provider": "aimo", "model": "{model}"}]}
    policy = parse(variant(("routes.*:deepseek-chat-v3", glob_route)))
    route = policy.find_route("abc:deepseek-chat-v3")
    assert route is not None and route.name == "*:deepseek-chat-v3" and route.is_pattern


def test_route_names_with_dots_are_quoted_in_paths() -> None:
    error = problem({**BASE, "routes": {"gpt-4.1": {"targets": []}}})
    assert error.path == 'routes."gpt-4.1".targets'


# --- clients -------------------------------------------------------------------------


def _with_clients(*clients: Any) -> dict[str, Any]:
    return variant(("clients", list(clients)))


def test_client_key_is_resolved_from_the_environment() -> None:
    policy = parse(_with_clients({"name": "web", "key_env": "WEB_KEY"}), env={"WEB_KEY": "client-secret"})
    client = policy.clients[0]
    assert (client.name, client.key_env, client.key) == ("web", "WEB_KEY", "client-secret")
    assert "client-secret" not in repr(policy)


def test_missing_client_key_variable_is_a_clear_error() -> None:
    error = problem(_with_clients({"name": "web", "key_env": "WEB_KEY"}))
    assert str(error) == "test.yaml: clients[0].key_env: environment variable WEB_KEY is not set"


def test_client_needs_exactly_one_key_source() -> None:
    neither = problem(_with_clients({"name": "web"}))
    both = problem(_with_clients({"name": "web", "key_env": "K", "key_sha256": "a" * 64}), env={"K": "v"})
    assert neither.path == "clients[0]" and "key_env" in neither.problem
    assert both.path == "clients[0].key_sha256" and "only one" in both.problem


def test_key_sha256_is_validated_and_lowercased() -> None:
    digest = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
    assert parse(_with_clients({"name": "web", "key_sha256": digest})).clients[0].key_sha256 == digest.lower()
    for bad in ("abc", "g" * 64, "a" * 65):
        error = problem(_with_clients({"name": "web", "key_sha256": bad}))
        assert "64 hexadecimal characters" in error.problem


def test_client_name_is_required_and_unique() -> None:
    assert problem(_with_clients({"key_sha256": "a" * 64})).path == "clients[0].name"
    error = problem(_with_clients({"name": "web", "key_sha256": "a" * 64},
                                  {"name": "web", "key_sha256": "b" * 64}))
    assert error.path == "clients[1].name"
    assert "duplicate client name `web`" in error.problem


def test_two_clients_may_not_share_a_key() -> None:
    import hashlib

    digest = hashlib.sha256(b"shared").hexdigest()
    error = problem(_with_clients({"name": "a", "key_env": "A"}, {"name": "b", "key_sha256": digest}),
                    env={"A": "shared"})
    assert error.path == "clients[1].key_sha256"
    assert "same key as client `a`" in error.problem
    assert "shared" not in str(error).replace("same key", "")


def test_client_routes_must_name_existing_routes() -> None:
    error = problem(_with_clients({"name": "web", "key_sha256": "a" * 64, "routes": ["chat", "caht"]}))
    assert error.path == "clients[0].routes[1]"
    assert error.problem == "unknown route `caht` (did you mean `chat`?); known routes: `chat`"


def test_client_routes_use_exact_route_keys_including_globs() -> None:
    data = variant(("routes.demo/*", {"targets": [{"provider": "aimo", "model": "{model}"}]}),
                   ("clients", [{"name": "web", "key_sha256": "a" * 64, "routes": ["demo/*"]}]))
    client = parse(data).clients[0]
    assert client.routes == ("demo/*",)
    assert client.may_use("demo/*") and not client.may_use("chat")
    assert parse(_with_clients({"name": "w", "key_sha256": "a" * 64})).clients[0].routes is None


@pytest.mark.parametrize(("rps", "burst"), [(0.5, 1), (1, 1), (2.5, 3), (20, 20)])
def test_burst_defaults_to_ceiling_of_requests_per_second(rps: float, burst: int) -> None:
    limits = {"requests_per_second": rps}
    policy = parse(_with_clients({"name": "w", "key_sha256": "a" * 64, "limits": limits}))
    assert policy.clients[0].limits == ClientLimits(requests_per_second=rps, burst=burst)


def test_explicit_burst_is_kept() -> None:
    limits = {"requests_per_second": 20, "burst": 40, "tokens_per_minute": 1000, "queue_s": 2}
    policy = parse(_with_clients({"name": "w", "key_sha256": "a" * 64, "limits": limits}))
    expected = ClientLimits(requests_per_second=20.0, burst=40, tokens_per_minute=1000, queue_s=2.0)
    assert policy.clients[0].limits == expected


def test_burst_without_requests_per_second_is_rejected() -> None:
    error = problem(_with_clients({"name": "w", "key_sha256": "a" * 64, "limits": {"burst": 5}}))
    assert error.path == "clients[0].limits.burst"
    assert "needs `requests_per_second`" in error.problem


def test_clients_must_be_a_list_of_mappings() -> None:
    assert "must be a list of clients" in problem(variant(("clients", {"web": {}}))).problem
    assert "must be a mapping" in problem(variant(("clients", ["web"]))).problem


# --- state and server ----------------------------------------------------------------


def test_redis_state_needs_a_redis_url() -> None:
    assert problem(variant(("state", {"backend": "redis"}))).path == "state.url"
    policy = parse(variant(("state", {"backend": "redis", "url": "rediss://cache:6380/1", "replicas": 3})))
    state = policy.state
    assert (state.backend, state.url, state.replicas) == ("redis", "rediss://cache:6380/1", 3)
    assert parse(variant(("state", {"backend": "redis", "url": "unix:///run/redis.sock"}))).state.url


def test_a_redis_password_is_not_in_the_policy_repr() -> None:
    policy = parse(variant(("state", {"backend": "redis", "url": "redis://:pw-Zq81LmN0pQrS@cache:6379/0"})))
    assert policy.state.url == "redis://:pw-Zq81LmN0pQrS@cache:6379/0"
    assert "Zq81LmN0" not in repr(policy) and "Zq81LmN0" not in repr(policy.state)


@pytest.mark.parametrize("url", ["http://cache:6379", "redis:/cache", "redis://", "cache:6379"])
def test_redis_url_scheme_is_checked(url: str) -> None:
    error = problem(variant(("state", {"backend": "redis", "url": url})))
    assert (error.path, error.problem) == ("state.url", "must be a redis://, rediss:// or unix:// URL")


def test_url_without_redis_backend_is_rejected() -> None:
    assert "only used when backend is redis" in problem(variant(("state.url", "redis://x:1"))).problem


@pytest.mark.parametrize(("key", "value"), [("backend", "postgres"), ("on_error", "retry")])
def test_state_choices_are_checked(key: str, value: str) -> None:
    error = problem(variant((f"state.{key}", value)))
    assert error.path == f"state.{key}" and "must be one of" in error.problem


def test_server_settings_are_read() -> None:
    server = {"host": "0.0.0.0", "port": 9000, "max_body_bytes": 8 << 20, "drain_timeout_s": 5}
    policy = parse(variant(("server", server)))
    assert (policy.server.host, policy.server.port) == ("0.0.0.0", 9000)
    assert policy.server.max_body_bytes == 8 << 20
    assert policy.server.drain_timeout_s == 5.0


# --- the result ------------------------------------------------------------------------


def test_result_is_immutable() -> None:
    data = variant(("clients", [{"name": "w", "key_sha256": "a" * 64, "routes": ["chat"]}]))
    policy = parse(data)
    assert isinstance(policy.providers, MappingProxyType)
    assert isinstance(policy.routes, MappingProxyType)
    assert isinstance(policy.providers["aimo"].headers, MappingProxyType)
    assert isinstance(policy.routes["chat"].targets, tuple)
    assert isinstance(policy.clients, tuple) and isinstance(policy.clients[0].routes, tuple)
    with pytest.raises(TypeError):
        policy.routes["other"] = policy.routes["chat"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.routes["chat"].deadline_s = 1  # type: ignore[misc]


# --- files ---------------------------------------------------------------------------


def test_load_policy_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE), encoding="utf-8")
    assert load_policy(good, env={}).source == str(good)

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(variant(("server.port", "http"))), encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(str(bad), env={})
    assert str(caught.value).startswith(f"{bad}: server.port: must be an integer")


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path)  # a directory
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"version: 1\n\xff\xfe\n")
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        load_policy(binary)


# --- the reference table ---------------------------------------------------------------


def _child_dataclass(hint: Any) -> tuple[type, str] | None:
    """For a field holding nested settings, the dataclass and the path separator to reach its keys."""
    if dataclasses.is_dataclass(hint):
        return typing.cast(type, hint), "."
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # an optional block such as `mock: MockSpec | None`
        blocks = [arg for arg in args if dataclasses.is_dataclass(arg)]
        return (blocks[0], ".") if blocks else None
    if origin is Mapping and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1], ".<name>."
    if origin is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0], "[]."
    return None


def _model_keys(cls: type = Policy, prefix: str = "") -> dict[str, dataclasses.Field[Any]]:
    """Every YAML key the model defines, as a documented dotted path."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, dataclasses.Field[Any]] = {}
    for fld in dataclasses.fields(cls):
        if not fld.init or is_computed(cls, fld.name):  # derived, never written in YAML
            continue
        path = prefix + fld.name
        keys[path] = fld
        child = _child_dataclass(hints[fld.name])
        if child is not None:
            keys.update(_model_keys(child[0], path + child[1]))
    return keys


def _reference_rows() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    reference = readme.split("\n## Policy reference\n", 1)[1].split("\n## ", 1)[0]
    for line in reference.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_reference_documents_every_model_field() -> None:
    missing = sorted(set(_model_keys()) - set(_reference_rows()))
    assert not missing, f"the README's policy reference lacks rows for: {missing}"


def test_reference_documents_no_key_the_model_lacks() -> None:
    stale = sorted(set(_reference_rows()) - set(_model_keys()))
    assert not stale, f"the README's policy reference documents unknown keys: {stale}"


def test_reference_defaults_match_the_model() -> None:
    rows = _reference_rows()
    for path, fld in _model_keys().items():
        cell = rows[path][1]
        if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            assert cell == "required", path
            continue
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        if dataclasses.is_dataclass(default):
            continue  # a block: its keys have their own rows
        documented = re.match(r"`([^`]*)`", cell)
        assert documented is not None, f"{path}: default cell {cell!r} has no `value`"
        assert yaml.safe_load(documented.group(1)) == _plain_default(default), path
