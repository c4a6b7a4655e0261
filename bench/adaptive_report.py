"""The tables, the markdown file and the chart of bench/adaptive.py, from its measurements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.adaptive_harness import Sample  # bench/adaptive.py puts the repository root on the path

ORDER = ("adaptive", "limits", "recovery", "hedging")  # the scenarios, as the file lists them


# -- measuring -----------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else None


def ok_samples(samples: Sequence[Sample], start: float = float("-inf"), end: float = float("inf")) -> list[Sample]:
    return [s for s in samples if s.status == 200 and start <= s.sent < end]


def sent(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if s.error is None or not s.error.startswith("skipped")]


def share(samples: Sequence[Sample], provider: str) -> float | None:
    return sum(s.provider == provider for s in samples) / len(samples) if samples else None


def time_to_majority(samples: Sequence[Sample], provider: str, start: float, end: float, *, window_s: float = 1.0,
                     hold_s: float = 3.0, step_s: float = 0.1) -> float | None:
    """Seconds after `start` until `provider` served more than half of the requests sent in the trailing
    `window_s`, and kept doing so for `hold_s` (so a weighted coin landing twice does not count)."""
    answered = ok_samples(samples)
    checks: list[tuple[float, bool]] = []
    for index in range(1, round((end - start) / step_s) + 1):
        t = start + index * step_s
        fraction = share([s for s in answered if t - window_s < s.sent <= t], provider)
        checks.append((t, fraction is not None and fraction > 0.5))
    for index, (t, good) in enumerate(checks):
        if t + hold_s > end + 1e-9:
            break  # not enough of the phase left to tell
        if good and all(g for u, g in checks[index:] if u <= t + hold_s):
            return t - start
    return None


# -- tables -------------------------------------------------------------------------------------------------
def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def secs(value: float | None, missing: str = "never") -> str:
    return missing if value is None else f"{value:.2f} s"


def msec(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def row(metric: str, metrics: dict[str, dict[str, Any]], key: str, fmt: Callable[[Any], str], target: str = "—",
        ok: Callable[[Any], bool] | None = None, judged: Sequence[str] = ("with",)) -> dict[str, Any]:
    """One table row: each variant's value, the target and whether the `judged` variants that ran meet it."""
    values = {name: "refused policy" if "rejected" in m else fmt(m.get(key)) for name, m in metrics.items()}
    checked = [metrics[name].get(key) for name in judged if name in metrics and "rejected" not in metrics[name]]
    if ok is None:
        met = "—"
    elif not checked:
        met = "n/a"
    else:
        met = "yes" if all(value is not None and ok(value) for value in checked) else "no"
    return {"metric": metric, "values": values, "target": target, "met": met}


def all_answered_row(metrics: dict[str, dict[str, Any]], judged: Sequence[str],
                     what: str = "client requests answered 200") -> dict[str, Any]:
    shown = {name: m if "rejected" in m else {**m, "both": (m["answered_200"], m["requests"])}
             for name, m in metrics.items()}
    return row(what, shown, "both", lambda v: f"{v[0]}/{v[1]}", "all", lambda v: v[0] == v[1], judged=judged)


def render_table(scenario: dict[str, Any]) -> str:
    names = list(scenario["labels"])
    header = ["metric", *(scenario["labels"][name] for name in names), "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in scenario["rows"]:
        lines.append("| " + " | ".join([r["metric"], *(r["values"].get(n, "—") for n in names), r["target"],
                                        r["met"]]) + " |")
    return "\n".join(lines)


def render_markdown(doc: dict[str, Any]) -> str:
    out = ["# Adaptive features: without vs with", "",
           "Written by `python bench/adaptive.py` (see its docstring). \"met\" judges the variants the feature is "
           "for (the \"with\" column; in recovery, new defaults and probes); \"refused policy\": the router did "
           "not accept that variant's policy keys.", ""]
    for key in ORDER:
        scenario = doc["scenarios"].get(key)
        if scenario is None:
            continue
        out += [f"## {scenario['title']}", "", scenario["about"], "",
                f"Run {scenario['run_at']}{' with --quick' if scenario['quick'] else ''}.", "",
                render_table(scenario), ""]
        out += [f"- `{name}`: the router refused the policy: {m['rejected']}"
                for name, m in scenario["variants"].items() if "rejected" in m]
        out.append("")
    return "\n".join(out)


def render_chart(scenario: dict[str, Any], path: Path) -> bool:
    """Client-seen latency over time (each request, and 1 s rolling p50/p99) per variant, the slow phase shaded,
    and the share served by A."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, params = scenario["series"], scenario["params"]
    if not series:
        return False
    t_slow, t_fast = params["warm_s"], params["warm_s"] + params["slow_s"]
    end = t_fast + params["recover_s"]
    titles = {"without": "strategy: weighted", "with": "strategy: adaptive"}
    fig, axes = plt.subplots(len(series) + 1, 1, figsize=(12, 3.2 * (len(series) + 1)), sharex=True)
    steps = [i * 0.25 for i in range(4, int(end / 0.25) + 1)]
    for ax, (name, points) in zip(axes, series.items(), strict=False):
        for provider, color in (("A", "tab:blue"), ("B", "tab:orange")):
            mine = [(t, lat * 1000) for t, lat, p in points if p == provider]
            ax.scatter([t for t, _ in mine], [lat for _, lat in mine], s=5, alpha=0.4, color=color, zorder=3,
                       label=f"served by {provider}")
        for q, style in ((0.5, "-"), (0.99, "--")):
            rolling = [percentile([lat for t0, lat, _ in points if t - 1 < t0 <= t], q) for t in steps]
            ax.plot(steps, [None if v is None else v * 1000 for v in rolling], style, color="black", linewidth=1,
                    alpha=0.8, label=f"p{round(q * 100)} (1 s rolling)")
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(titles.get(name, name))
    share_ax = axes[-1]
    for name, points in series.items():
        windows = [[p for t0, _, p in points if t - 1 < t0 <= t] for t in steps]
        share_ax.plot(steps, [100 * w.count("A") / len(w) if w else None for w in windows],
                      label=titles.get(name, name))
    share_ax.set_ylabel("served by A (%, 1 s)")
    share_ax.set_xlabel("seconds since start")
    share_ax.set_ylim(0, 105)
    for ax in axes:
        ax.axvspan(t_slow, t_fast, color="red", alpha=0.08, label="A answers in 1 s")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.suptitle("A 50 ms, B 500 ms in one tier; A slows to 1 s, then recovers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
