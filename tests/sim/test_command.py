"""`router simulate`: arguments, the JSON object, errors, the chart; in process and as a subprocess."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.sim import add_parser
from router.sim.command import main, run
from tests.support.daemon import REPO_ROOT

POLICY = "policies/aimo-asi1.yaml"  # its key variables need not be set: nothing is sent anywhere
FAULTS = "policies/faults/aimo-outage.yaml"
CONTRACT_KEYS = {"requests", "succeeded", "success_rate", "upstream_attempts", "latency_s", "providers"}


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["-c", POLICY, "--faults", FAULTS, "--json", *args]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object, on one line
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_json_has_the_contract_shape_and_is_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "--requests", "3000")
    assert set(data) >= CONTRACT_KEYS
    assert data["requests"] == 3000 and 0 < data["succeeded"] <= 3000  # type: ignore[operator]
    assert data["success_rate"] == pytest.approx(data["succeeded"] / 3000)  # type: ignore[operator]
    assert {"p50", "p99"} <= set(data["latency_s"])  # type: ignore[arg-type]
    providers = data["providers"]
    assert isinstance(providers, dict) and set(providers) == {"aimo", "asi1"}
    assert sum(p["attempts"] for p in providers.values()) == data["upstream_attempts"]
    assert sum(p["share"] for p in providers.values()) == pytest.approx(1.0)
    assert run_json(capsys, "--requests", "3000") == data
    assert run_json(capsys, "--requests", "3000", "--seed", "2") != data


def test_the_profile_duration_is_the_default_length(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    faults = tmp_path / "short.yaml"
    faults.write_text("duration_s: 30\nrate_per_s: 10\nproviders:\n  asi1: {latency_s: {p50: 0.1, p99: 0.5}}\n",
                      encoding="utf-8")
    assert main(["-c", POLICY, "--faults", str(faults), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert 200 < data["requests"] < 400  # Poisson: about 300
    assert data["providers"]["aimo"]["profiled"] is False and data["success_rate"] == 1.0
    assert data["duration_s"] == 30.0


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", POLICY, "--faults", FAULTS, "--requests", "2000", "--windows", "4"]) == 0
    out = capsys.readouterr().out
    for expected in ("router simulate: policies/aimo-asi1.yaml (model 'chat', route 'chat')", "success rate",
                     "attempts/request", "upstream load", "latency            p50", "arrived (s)", "aimo refused",
                     "outages (recovery: from the outage's end)", "legend:", "(simulated"):
        assert expected in out, expected
    assert len([line for line in out.splitlines() if line[:1].isdigit() and " s " not in line]) >= 4


@pytest.mark.parametrize(("args", "message"), [
    (["--faults", "missing.yaml"], "error: missing.yaml: cannot read the fault profile"),
    (["-c", "missing-policy.yaml", "--faults", FAULTS], "error: missing-policy.yaml: cannot read the policy file"),
    (["--route", "nope", "--faults", FAULTS], "error: no route matches 'nope'; routes: chat, asi1-mini"),
    (["--client", "nobody", "--faults", FAULTS], "error: --client 'nobody': no such client"),
])
def test_errors_are_one_line_and_status_1(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["-c", POLICY, *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_bad_profile_names_the_key_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text("duration_s: 60\nrate_per_s: 5\nproviders:\n  aimoo: {stall_percent: 1}\n", encoding="utf-8")
    assert main(["-c", POLICY, "--faults", str(faults)]) == 1
    assert capsys.readouterr().err == (f"error: {faults}: providers.aimoo: unknown provider (did you mean `aimo`?); "
                                       "the policy has aimo, asi1\n")


def test_plot_without_matplotlib_says_what_to_install(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    chart = tmp_path / "chart.png"
    assert main(["-c", POLICY, "--faults", FAULTS, "--plot", str(chart)]) == 1
    assert capsys.readouterr().err == "error: --plot needs matplotlib: pip install 'llm-router[plot]'\n"
    assert not chart.exists()


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"  # matplotlib comes with the test extra
    data = run_json(capsys, "--requests", "2000", "--plot", str(chart))
    assert data["requests"] == 2000
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_add_parser_registers_simulate_with_its_handler() -> None:
    parser = argparse.ArgumentParser(prog="router")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--faults", FAULTS, "--requests", "5", "--json"])
    assert (args.command, args.run, args.faults, args.requests, args.json) == ("simulate", run, FAULTS, 5, True)
    assert args.config == "policies/default.yaml" and args.seed == 1 and args.plot is None
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--faults", FAULTS, "--requests", "0"])


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


@pytest.mark.slow
def test_as_a_subprocess() -> None:
    result = _subprocess("router.sim", "-c", POLICY, "--faults", FAULTS, "--requests", "1000", "--json")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) >= CONTRACT_KEYS


@pytest.mark.slow
@pytest.mark.parametrize("bad", [False, True])
def test_router_cli_simulate(bad: bool, tmp_path: Path) -> None:
    faults = FAULTS
    if bad:
        faults = str(tmp_path / "bad.yaml")
        Path(faults).write_text("duration_s: 60\nrate_per_s: 5\nproviders:\n  aimo: {errors: {503: 2}}\n",
                                encoding="utf-8")
    result = _subprocess("router.cli", "simulate", "-c", POLICY, "--faults", faults, "--requests", "1000", "--json")
    if bad:
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"error: {faults}: providers.aimo.errors.503: must be <= 1, got 2\n"
    else:
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert set(data) >= CONTRACT_KEYS and data["requests"] == 1000
