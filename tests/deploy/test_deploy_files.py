"""deploy/ is consistent: files parse, ports, paths, labels and timeouts agree, policies load,
PromQL names only exported metrics, and promtool accepts the Prometheus files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli import _parser as cli_parser
from tests.deploy.files import (
    ALERTS,
    ALERTS_UNIT_TESTS,
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    DOCKERFILE,
    ENV_EXAMPLE,
    EXPORTED_METRICS,
    GRAFANA_PROVISIONING,
    K8S,
    POLICY_EXAMPLE,
    PORT,
    PROMETHEUS_CONFIG,
    REPO,
    SYSTEMD_UNIT,
    alert_rules,
    compose,
    configmap_policy_text,
    dashboard,
    dashboard_queries,
    dockerfile,
    dockerfile_env,
    dockerfile_exec_form,
    dockerfile_instructions,
    env_file_names,
    k8s_objects,
    load_with_placeholders,
    load_yaml,
    load_yaml_documents,
    metric_names_in,
    router_container,
    seconds,
    secret_names,
    substitute_variables,
    systemd_unit,
    yaml_files,
)
from tests.support.system import require

SELECTOR = {"app.kubernetes.io/name": "llm-router", "app.kubernetes.io/instance": "llm-router"}
POLICY_PATH = "/etc/llm-router/policy.yaml"
JOB = "llm-router"


def run(*command: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)


def parse_serve_args(argv: list[str]) -> Any:
    """`router ...` arguments as the CLI parses them; a bad flag fails the test instead of exiting."""
    assert argv[0] == "router", argv
    try:
        return cli_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse's error exit
        raise AssertionError(f"`{' '.join(argv)}` is not a valid router command line") from exc


def pod_spec() -> dict[str, Any]:
    return k8s_objects()["Deployment"]["spec"]["template"]["spec"]


def container_port(name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    ports = {port["name"]: port["containerPort"] for port in router_container()["ports"]}
    assert name_or_number in ports, f"no container port named {name_or_number!r}"
    return ports[name_or_number]


def example_drain_s() -> float:
    policy = load_with_placeholders(POLICY_EXAMPLE.read_text(encoding="utf-8"), str(POLICY_EXAMPLE))
    return policy.server.drain_timeout_s


def configmap_drain_s() -> float:
    return load_with_placeholders(configmap_policy_text(), "configmap.yaml").server.drain_timeout_s


# --- every file parses --------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_file_parses_to_a_mapping(path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents, f"{path}: no YAML document"
    assert all(isinstance(doc, dict) for doc in documents)


def test_deploy_ships_every_piece() -> None:
    expected = ["Dockerfile", "README.md", "compose.yaml", "policy.example.yaml", "router.env.example",
                "prometheus/prometheus.yml", "prometheus/alerts.yml", "grafana/dashboard.json",
                "systemd/llm-router.service", "kubernetes/kustomization.yaml", "kubernetes/servicemonitor.yaml"]
    assert [name for name in expected if not (DEPLOY / name).is_file()] == []
    assert set(k8s_objects()) == {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
                                  "HorizontalPodAutoscaler", "ServiceMonitor"}


def test_dashboard_is_json_with_unique_panel_ids_and_a_datasource_variable() -> None:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    assert data["uid"] and data["title"]
    variables = {var["name"]: var for var in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # Every query goes through the variable, so the dashboard works with any datasource name or uid.
    for panel in data["panels"]:
        for target in panel.get("targets") or ():
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_kustomization_lists_every_manifest_but_the_optional_servicemonitor() -> None:
    listed = load_yaml(K8S / "kustomization.yaml")["resources"]
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk - {"servicemonitor.yaml"}
    for doc in k8s_objects().values():
        assert doc["apiVersion"] and doc["metadata"]["name"].startswith("llm-router"), doc["_file"]
        assert "namespace" not in doc["metadata"], f"{doc['_file']}: the namespace is the one applied into"


# --- the policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["policy.example.yaml", "kubernetes/configmap.yaml"])
def test_shipped_policy_loads_listens_on_all_interfaces_and_requires_client_keys(source: str) -> None:
    text = POLICY_EXAMPLE.read_text(encoding="utf-8") if source == "policy.example.yaml" else configmap_policy_text()
    policy = load_with_placeholders(text, source)
    assert (policy.server.host, policy.server.port) == ("0.0.0.0", PORT)
    assert policy.clients, "a router listening on 0.0.0.0 must require client keys"
    assert {"aimo", "asi1"} <= set(policy.providers)
    assert all(provider.api_key_env for provider in policy.providers.values())


def test_router_check_skip_env_accepts_the_example_policy() -> None:
    done = run(sys.executable, "-m", "router.cli", "check", "--skip-env", str(POLICY_EXAMPLE), cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_example_policy_declares_its_variables_on_the_first_line() -> None:
    first = POLICY_EXAMPLE.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# env:")
    assert set(first.removeprefix("# env:").split()) == secret_names(POLICY_EXAMPLE.read_text(encoding="utf-8"))


def test_secret_and_env_example_hold_exactly_the_keys_the_policies_name() -> None:
    secret = k8s_objects()["Secret"]
    assert set(secret["stringData"]) == secret_names(configmap_policy_text())
    assert all(value == "replace-me" for value in secret["stringData"].values()), "placeholders only"
    assert env_file_names(ENV_EXAMPLE) == secret_names(POLICY_EXAMPLE.read_text(encoding="utf-8"))
    # The filled-in copy holds real keys: git must ignore it.
    assert "router.env" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").splitlines()


# --- ports, paths, labels -------------------------------------------------------------------------


def test_every_file_names_the_same_port() -> None:
    assert dockerfile("EXPOSE") == [str(PORT)]
    assert dockerfile_env()["LLM_ROUTER_HEALTHCHECK_URL"] == f"http://127.0.0.1:{PORT}/healthz"
    container = router_container()
    assert [port["containerPort"] for port in container["ports"]] == [PORT]
    assert container_port(container["readinessProbe"]["httpGet"]["port"]) == PORT
    assert container_port(container["livenessProbe"]["httpGet"]["port"]) == PORT
    annotations = k8s_objects()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORT)
    (service_port,) = k8s_objects()["Service"]["spec"]["ports"]
    assert service_port["port"] == PORT and container_port(service_port["targetPort"]) == PORT
    (endpoint,) = k8s_objects()["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert compose()["services"]["router"]["ports"] == [f"127.0.0.1:{PORT}:{PORT}"]
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"router:{PORT}"]}]  # the compose service name


async def test_probe_and_scrape_paths_are_routes_the_daemon_serves() -> None:
    from router.router import Router
    from router.server import create_app

    container = router_container()
    annotations = k8s_objects()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    (endpoint,) = k8s_objects()["ServiceMonitor"]["spec"]["endpoints"]
    (job,) = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert annotations["prometheus.io/path"] == endpoint["path"] == job["metrics_path"] == "/metrics"
    assert annotations["prometheus.io/scrape"] == "true"
    assert dockerfile_env()["LLM_ROUTER_HEALTHCHECK_URL"].endswith("/healthz")

    router = Router(load_with_placeholders(POLICY_EXAMPLE.read_text(encoding="utf-8"), "example"))
    try:
        served = {route.resource.canonical for route in create_app(router).router.routes() if route.method == "GET"}
    finally:
        await router.aclose()
    assert {"/healthz", "/readyz", "/metrics"} <= served


def test_selectors_match_the_pod_labels_and_names_match_their_references() -> None:
    objects = k8s_objects()
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    assert SELECTOR.items() <= pod_labels.items()
    assert objects["Service"]["spec"]["selector"] == SELECTOR
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == SELECTOR
    (spread,) = pod_spec()["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == SELECTOR
    # The ServiceMonitor selects the Service (by its labels), not the pods.
    assert objects["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() \
        <= objects["Service"]["metadata"]["labels"].items()
    for doc in objects.values():
        assert SELECTOR.items() <= doc["metadata"]["labels"].items(), doc["_file"]

    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      deployment["metadata"]["name"])
    (volume,) = pod_spec()["volumes"]
    assert volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert router_container()["envFrom"] == [{"secretRef": {"name": objects["Secret"]["metadata"]["name"]}}]
    # LLMRouterDown matches job="llm-router": the compose job, and the ServiceMonitor's default (the Service name).
    assert objects["Service"]["metadata"]["name"] == JOB
    assert load_yaml(PROMETHEUS_CONFIG)["scrape_configs"][0]["job_name"] == JOB
    (down,) = [rule for rule in alert_rules() if rule["alert"] == "LLMRouterDown"]
    assert f'job="{JOB}"' in down["expr"]


# --- the process: command line, policy path, user ----------------------------------------------


def test_image_entrypoint_and_deployment_args_form_a_valid_serve_command() -> None:
    entrypoint = dockerfile_exec_form("ENTRYPOINT")
    args = parse_serve_args([*entrypoint, *router_container()["args"]])
    assert (args.command, args.config, args.watch) == ("serve", POLICY_PATH, True)
    assert parse_serve_args(entrypoint).config == POLICY_PATH
    # The ConfigMap volume puts policy.yaml exactly where the entrypoint reads it.
    (mount,) = router_container()["volumeMounts"]
    (volume,) = pod_spec()["volumes"]
    (item,) = volume["configMap"]["items"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert f"{mount['mountPath']}/{item['path']}" == POLICY_PATH
    assert item["key"] in k8s_objects()["ConfigMap"]["data"]
    assert "subPath" not in mount, "a subPath mount is never updated, so --watch would not see ConfigMap edits"
    # Compose mounts its policy file there too; the image bakes the example in at the same path.
    assert f"./policy.example.yaml:{POLICY_PATH}:ro" in compose()["services"]["router"]["volumes"]
    assert f"deploy/policy.example.yaml {POLICY_PATH}" in dockerfile("COPY")


def test_systemd_unit_runs_a_valid_serve_command_with_reload_and_hardening() -> None:
    unit = systemd_unit()
    service = {key: values[-1] for key, values in unit["Service"].items()}
    command = service["ExecStart"].split()
    assert command[0].endswith("/router")
    assert parse_serve_args(["router", *command[1:]]).config == POLICY_PATH
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] not in {"root", "0"} and service["Group"] not in {"root", "0"}
    assert service["EnvironmentFile"].startswith("/etc/llm-router/")
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": ""}.items():
        assert service.get(key) == value, key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    require("systemd-analyze", "systemd")
    # The install path does not exist here: point ExecStart at an executable that does.
    text = SYSTEMD_UNIT.read_text(encoding="utf-8").replace("/opt/llm-router/bin/router", sys.executable)
    copy = tmp_path / SYSTEMD_UNIT.name
    copy.write_text(text, encoding="utf-8")
    done = run("systemd-analyze", "verify", str(copy))
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_image_runs_as_the_non_root_uid_the_pods_require() -> None:
    instructions = [name for name, _ in dockerfile_instructions()]
    assert dockerfile("FROM") == ["python:3.11-slim"]
    (user,) = dockerfile("USER")
    uid, _, gid = user.partition(":")
    # The user switch comes after every RUN: nothing later runs as root.
    assert instructions.index("USER") > max(i for i, name in enumerate(instructions) if name == "RUN")
    assert dockerfile("STOPSIGNAL") == ["SIGTERM"]
    assert dockerfile_exec_form("HEALTHCHECK")[0] == "python"
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert (str(pod_security["runAsUser"]), str(pod_security["runAsGroup"])) == (uid, gid) != ("0", "0")
    container_security = router_container()["securityContext"]
    assert container_security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                  "capabilities": {"drop": ["ALL"]}}
    assert pod_spec()["automountServiceAccountToken"] is False


@pytest.mark.slow
def test_dockerfile_copies_enough_to_build_the_package(tmp_path: Path) -> None:
    """Replays the Dockerfile's COPY lines into a directory and builds a wheel from it, as `pip install` does."""
    context = tmp_path / "context"
    for rest in dockerfile("COPY"):
        *sources, destination = rest.split()
        if not destination.startswith("/src"):
            continue
        target = context / destination.removeprefix("/src").lstrip("/")
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
    done = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheels"), str(context),
               timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("llm_router-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"router/cli.py", "router/server/main.py", "router/observe/prometheus.py"} <= names
    assert "router = router.cli:main" in entry_points


# --- resources, replicas, grace periods ---------------------------------------------------------


def test_deployment_has_replicas_resources_and_a_budget_that_allows_evictions() -> None:
    objects = k8s_objects()
    replicas = objects["Deployment"]["spec"]["replicas"]
    assert replicas == 2
    resources = router_container()["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] < replicas
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == replicas < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    strategy = objects["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "a rollout never drops below the wanted replicas"


def test_termination_grace_period_covers_the_prestop_sleep_and_the_drain() -> None:
    pre_stop = router_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = float(pre_stop[1])
    assert sleep_s >= 5
    grace_s = pod_spec()["terminationGracePeriodSeconds"]
    assert grace_s > sleep_s + configmap_drain_s(), (grace_s, sleep_s, configmap_drain_s())


def test_compose_and_systemd_stop_timeouts_exceed_the_drain() -> None:
    drain_s = example_drain_s()
    assert seconds(compose()["services"]["router"]["stop_grace_period"]) > drain_s
    (timeout,) = systemd_unit()["Service"]["TimeoutStopSec"]
    assert seconds(timeout) > drain_s


# --- compose and Grafana provisioning -----------------------------------------------------------


def test_compose_wires_the_files_of_this_directory() -> None:
    services = compose()["services"]
    assert set(services) == {"router", "redis", "prometheus", "grafana"}
    build = services["router"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["router"]["env_file"] == ["router.env"]
    assert (COMPOSE.parent / "router.env.example").is_file()
    for name, service in services.items():
        for volume in service.get("volumes") or ():
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
    # Prometheus finds the rule files where prometheus.yml says, next to it.
    mounts = dict(volume.split(":")[:2] for volume in services["prometheus"]["volumes"] if volume.startswith("."))
    config_target = mounts["./prometheus/prometheus.yml"]
    for rule_file in load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        assert f"{Path(config_target).parent}/{rule_file}" in mounts.values()
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file()
    assert f"--config.file={config_target}" in services["prometheus"]["command"]


def test_grafana_provisioning_points_at_the_dashboard_and_the_prometheus_service() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"] if volume.startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "llm-router.yaml")["providers"]
    dashboard_target = mounts["./grafana/dashboard.json"]
    assert str(Path(dashboard_target).parent) == provider["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target
    (datasource,) = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert compose()["services"]["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]


# --- metric names ---------------------------------------------------------------------------------


def referenced_metrics() -> dict[str, set[str]]:
    return {"dashboard.json": metric_names_in(DASHBOARD.read_text(encoding="utf-8")),
            "alerts.yml": metric_names_in(ALERTS.read_text(encoding="utf-8"))}


def test_dashboard_and_alerts_name_only_the_public_metrics() -> None:
    for source, names in referenced_metrics().items():
        assert names, f"{source} names no llm_router_ metric"
        assert names - EXPORTED_METRICS == set(), f"{source} uses metrics the router does not export"


def test_dashboard_shows_every_public_metric() -> None:
    assert EXPORTED_METRICS - referenced_metrics()["dashboard.json"] == set()


def registered_metric_names() -> set[str]:
    """The names `router.observe.prometheus.PrometheusObserver` registers (what the daemon serves at /metrics)."""
    try:
        from router.observe.prometheus import PrometheusObserver
    except ImportError as exc:
        pytest.fail(f"router.observe.prometheus.PrometheusObserver cannot be imported ({exc}), so the "
                    "dashboard and the alerts cannot be checked against the metrics the router really registers",
                    pytrace=False)
    from prometheus_client import CollectorRegistry

    names = set()
    for family in PrometheusObserver(CollectorRegistry()).registry.collect():
        # prometheus_client names a counter's family without its `_total`; the series keep it.
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_dashboard_and_alerts_name_only_metrics_the_router_registers() -> None:
    registered = registered_metric_names()
    for source, names in referenced_metrics().items():
        assert names - registered == set(), f"{source} uses metrics router.observe.prometheus does not register"
    assert registered == EXPORTED_METRICS, "the public list (docs/metrics.md) and router.observe.prometheus disagree"


# --- alerts ---------------------------------------------------------------------------------------


def test_every_alert_has_a_for_duration_a_severity_and_a_summary_and_description() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {"LLMRouterHighErrorRatio", "LLMRouterBreakerOpen", "LLMRouterRetryBudgetExhausted",
            "LLMRouterHighLatencyP99", "LLMRouterProviderAuthFailing", "LLMRouterConfigReloadFailed",
            "LLMRouterNoTraffic"} <= set(names)
    for rule in rules:
        assert seconds(rule["for"]) > 0, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
    (auth,) = [rule for rule in rules if rule["alert"] == "LLMRouterProviderAuthFailing"]
    assert 'outcome="auth_error"' in auth["expr"]


def test_promtool_check_rules_accepts_the_alerts(promtool: str) -> None:
    done = run(promtool, "check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_config_accepts_the_scrape_config(promtool: str) -> None:
    done = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_fire_on_scripted_series_and_stay_quiet_on_benign_ones(promtool: str, tmp_path: Path) -> None:
    data = load_yaml(ALERTS)
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")  # promtool compares annotations verbatim; check rules validates them
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    shutil.copy(ALERTS_UNIT_TESTS, tmp_path / ALERTS_UNIT_TESTS.name)
    done = run(promtool, "test", "rules", ALERTS_UNIT_TESTS.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses rule expressions: each query, variables substituted, becomes a recording rule."""
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = [{"record": f"dashboard:query_{index}", "expr": substitute_variables(expr)}
             for index, (_, expr) in enumerate(queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_variables_query_public_metrics() -> None:
    variables = {var["name"]: var for var in dashboard()["templating"]["list"]}
    assert variables["route"]["definition"] == "label_values(llm_router_requests_total, route)"
    assert variables["provider"]["definition"] == "label_values(llm_router_upstream_attempts_total, provider)"
    titles = " ".join(title.lower() for title, _ in dashboard_queries())
    for topic in ("requests / s", "error ratio", "p99", "time to first byte", "retries", "failovers",
                  "breaker state", "rate-limit", "tokens"):
        assert topic in titles, topic
