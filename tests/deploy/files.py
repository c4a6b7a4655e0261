"""The deploy/ files as data: paths, parsed manifests, policies, and the PromQL they contain."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from router.policy import parse_policy
from router.policy.model import Policy

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
POLICY_EXAMPLE = DEPLOY / "policy.example.yaml"
ENV_EXAMPLE = DEPLOY / "router.env.example"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
SYSTEMD_UNIT = DEPLOY / "systemd" / "llm-router.service"
ALERTS_UNIT_TESTS = Path(__file__).resolve().parent / "alerts_test.yml"

PORT = 8080
# The public metric names (docs/architecture.md §6; docs/metrics.md). Dashboards and alerts may use no other.
EXPORTED_METRICS = frozenset(f"llm_router_{name}" for name in (
    "requests_total", "request_duration_seconds", "requests_in_flight",
    "upstream_attempts_total", "upstream_attempt_duration_seconds", "upstream_ttfb_seconds",
    "stream_chunk_gap_seconds", "retries_total", "failovers_total", "retry_budget_exhausted_total",
    "client_rate_limited_total", "provider_throttled_total", "breaker_state", "breaker_ejections_total",
    "malformed_events_total", "upstream_resends_total", "tokens_total", "state_backend_errors_total", "build_info",
    "config_reloads_total", "limit_header_throttles_total", "target_latency_seconds", "health_probes_total",
    "hedges_total",
))
_METRIC_TOKEN = re.compile(r"llm_router_[a-z_]+")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|count|sum)$")
# Grafana's variables, as a query against Prometheus would see them after substitution.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "route": ".*", "provider": ".*"}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


# --- YAML and JSON ------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@cache
def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every manifest under deploy/kubernetes/ (kustomization.yaml aside), by kind; one object per kind."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml_documents(path):
            assert doc["kind"] not in objects, f"{path.name}: a second {doc['kind']}"
            doc["_file"] = path.name
            objects[doc["kind"]] = doc
    return objects


def router_container() -> dict[str, Any]:
    containers = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the Deployment runs one container"
    return containers[0]


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


# --- policies -----------------------------------------------------------------------------------


def configmap_policy_text() -> str:
    return k8s_objects()["ConfigMap"]["data"]["policy.yaml"]


def secret_names(text: str) -> set[str]:
    """The environment variables a policy names for its keys (providers' api_key_env, clients' key_env)."""
    data = yaml.safe_load(text)
    names = {provider["api_key_env"] for provider in data["providers"].values() if provider.get("api_key_env")}
    names |= {client["key_env"] for client in data.get("clients") or () if client.get("key_env")}
    return names


def load_with_placeholders(text: str, source: str) -> Policy:
    return parse_policy(text, source=source, env={name: f"placeholder-{name.lower()}" for name in secret_names(text)})


def env_file_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.partition("=")[0])
    return names


# --- Dockerfile and systemd ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [rest for name, rest in dockerfile_instructions() if name == keyword]


def dockerfile_exec_form(keyword: str) -> list[str]:
    """The JSON array of the last ENTRYPOINT / CMD-like instruction (HEALTHCHECK: after `CMD`)."""
    rest = dockerfile(keyword)[-1]
    if keyword == "HEALTHCHECK":
        rest = rest[rest.index("CMD ") + len("CMD "):]
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), rest
    return value


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in dockerfile("ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def systemd_unit() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{SYSTEMD_UNIT.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str | int | float) -> float:
    """A duration as systemd or compose writes it: 45, "45", "45s", "1m30s"."""
    if isinstance(value, int | float):
        return float(value)
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
    for match in re.finditer(r"(\d+(?:\.\d+)?)\s*(h|min|m|s|)", value.strip()):
        number, unit = match.groups()
        total += float(number) * units["m" if unit == "min" else unit]
    assert number, f"not a duration: {value!r}"
    return total


# --- PromQL -------------------------------------------------------------------------------------


def metric_names_in(text: str) -> set[str]:
    """Every `llm_router_*` metric a text refers to, histogram series folded into their metric."""
    return {_HISTOGRAM_SERIES.sub("", token) for token in _METRIC_TOKEN.findall(text)}


def _walk(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as written) for every panel target."""
    queries = []
    for panel in _walk(dashboard()["panels"]):
        for target in panel.get("targets") or ():
            queries.append((panel["title"], target["expr"]))
    return queries


def substitute_variables(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown dashboard variable ${name} in {expr}"
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]
