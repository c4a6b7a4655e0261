"""Every shipped policy file loads; the demo policy needs no secrets.

A file that needs environment variables declares them on its first line as
`# env: NAME1 NAME2`; the tests supply dummy values for exactly those.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from router.errors import PolicyError
from router.policy import load_policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"
# policies/faults/ holds `router simulate` fault profiles, not policies (tests/sim/ loads them).
FAULTS = POLICIES / "faults"
POLICY_FILES = sorted(path for path in POLICIES.rglob("*.yaml") if FAULTS not in path.parents)
DEFAULT = POLICIES / "default.yaml"
AIMO_MODEL = "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3"


def declared_env(path: Path) -> list[str]:
    first_line = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    prefix = "# env:"
    return first_line[len(prefix):].split() if first_line.startswith(prefix) else []


def dummy_env(path: Path) -> dict[str, str]:
    return {name: f"dummy-{name.lower()}" for name in declared_env(path)}


def test_policy_directory_ships_the_expected_files() -> None:
    names = {path.relative_to(POLICIES).as_posix() for path in POLICY_FILES}
    assert {"default.yaml", "aimo-asi1.yaml"} <= names
    assert len([name for name in names if name.startswith("examples/")]) >= 3


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda path: path.relative_to(POLICIES).as_posix())
def test_shipped_policy_file_loads(path: Path) -> None:
    policy = load_policy(path, env=dummy_env(path))
    assert policy.providers and policy.routes
    assert policy.source == str(path)


@pytest.mark.parametrize("path", [path for path in POLICY_FILES if declared_env(path)],
                         ids=lambda path: path.relative_to(POLICIES).as_posix())
def test_env_comment_lists_only_variables_the_file_needs(path: Path) -> None:
    for name in declared_env(path):
        env = dummy_env(path)
        del env[name]
        with pytest.raises(PolicyError, match=f"environment variable {name} is not set"):
            load_policy(path, env=env)


def test_default_policy_needs_no_environment() -> None:
    assert declared_env(DEFAULT) == []
    policy = load_policy(DEFAULT, env={})
    assert all(provider.api_key_env is None for provider in policy.providers.values())
    assert policy.clients == ()


def test_default_policy_is_the_offline_demo() -> None:
    policy = load_policy(DEFAULT, env={})
    primary, backup = policy.providers["demo-primary"], policy.providers["demo-backup"]
    assert primary.base_url == "http://127.0.0.1:9101/v1"
    assert backup.base_url == "http://127.0.0.1:9102/v1"
    assert backup.supports_prefill and not primary.supports_prefill
    assert primary.mock is not None and backup.mock is not None  # the daemon starts both fakes itself
    for provider in (primary, backup):
        timeouts = provider.timeouts
        assert (timeouts.connect_s, timeouts.first_byte_s, timeouts.idle_s) == (2, 10, 10)

    chat = policy.routes["chat"]
    assert [(t.provider, t.priority) for t in chat.targets] == [("demo-primary", 0), ("demo-backup", 1)]
    assert chat.deadline_s == 30
    fast = policy.routes["chat-fast"]
    assert fast.strategy == "least_busy" and {t.priority for t in fast.targets} == {0}

    glob = policy.find_route("demo/anything")
    assert glob is not None and glob.name == "demo/*"
    assert [(t.provider, t.upstream_model("demo/anything")) for t in glob.targets] == [
        ("demo-primary", "demo/anything"), ("demo-backup", "demo/anything")]


def test_aimo_asi1_policy_wires_the_real_providers() -> None:
    path = POLICIES / "aimo-asi1.yaml"
    policy = load_policy(path, env=dummy_env(path))
    assert policy.providers["aimo"].base_url == "https://devnet.aimo.network/api/v1"
    assert policy.providers["aimo"].api_key == "dummy-aimo_api_key"
    assert policy.providers["asi1"].chat_url == "https://api.asi1.ai/v1/chat/completions"
    assert [(t.provider, t.model) for t in policy.routes["chat"].targets] == [
        ("aimo", AIMO_MODEL), ("asi1", "asi1-mini")]
    route = policy.find_route(AIMO_MODEL)
    assert route is not None and route.targets[0].upstream_model(AIMO_MODEL) == AIMO_MODEL
    web = policy.client_named("web")
    assert web is not None and web.key_env == "ROUTER_CLIENT_WEB_KEY" and web.limits.requests_per_second
