"""bench/run.py's report: the Markdown tables and the charts, from the summary it writes to results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REFS = (("relay", "relay"), ("relay_uvloop", "uvloop relay"))


def _range(spread: dict[str, float], digits: int = 2) -> str:
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


def render_table(summary: dict[str, Any]) -> str:
    lines = [f"Load generator: {summary['generator']}, {summary['duration']} s per step, {summary['rounds']} "
             "interleaved rounds: medians, and (min-max) over the rounds. Relays and router pinned to CPU 0; "
             "wrk, the fake upstream and the clients on CPU 1.", "",
             "**JSON** (req/s; ratios are the router's over each relay, round by round)", "",
             "| connections | direct | relay | uvloop relay | router | router / relay | router / uvloop relay "
             "| p50 / p99 ms direct | p50 / p99 ms router | CPU ms/req relay / uvloop / router |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for conns, step in summary["json"].items():
        d, r, u, x = step["direct"], step["relay"], step["relay_uvloop"], step["router"]
        lines.append(f"| {conns} | {d['rps']['median']:.0f} | {r['rps']['median']:.0f} | {u['rps']['median']:.0f} | "
                     f"{x['rps']['median']:.0f} | {_range(step['router_vs']['relay'])} | "
                     f"{_range(step['router_vs']['relay_uvloop'])} | {d['p50_ms']:.3f} / {d['p99_ms']:.3f} | "
                     f"{x['p50_ms']:.3f} / {x['p99_ms']:.3f} | {r['cpu_ms']:.3f} / {u['cpu_ms']:.3f} / "
                     f"{x['cpu_ms']:.3f} |")
    lines += ["", "**Streams** (streams/s, or req/s for JSON; CPU per stream, and per event)", "",
              "| step | relay | uvloop relay | router | router / relay | router / uvloop relay "
              "| CPU ms relay / uvloop / router | CPU µs/event relay / uvloop / router |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, step in summary["streams"].items():
        r, u, x = step["relay"], step["relay_uvloop"], step["router"]
        per_event = "-" if x["cpu_us_per_event"] is None else \
            f"{r['cpu_us_per_event']:.2f} / {u['cpu_us_per_event']:.2f} / {x['cpu_us_per_event']:.2f}"
        lines.append(f"| {name} | {r['rps']['median']:.0f} | {u['rps']['median']:.0f} | {x['rps']['median']:.0f} | "
                     f"{_range(step['router_vs']['relay'])} | {_range(step['router_vs']['relay_uvloop'])} | "
                     f"{r['cpu_ms']:.3f} / {u['cpu_ms']:.3f} / {x['cpu_ms']:.3f} | {per_event} |")
    crowd = summary["crowd"]
    lines += ["", f"**{summary['crowd_streams']} paced streams at once** ({summary['crowd_model']}: "
              "50 events 100 ms apart; gaps counted from each stream's 5th event)",
              "", "| side | CPU µs/event | router CPU / this side's | gap p50 ms | gap p99 ms | p99 added over direct "
              "| streams (failed) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for side in ("direct", "relay", "relay_uvloop", "router"):
        c = crowd[side]
        ratio = _range(crowd["router_cpu_vs"][side]) if side in crowd["router_cpu_vs"] else "-"
        cpu = "-" if side == "direct" else f"{c['cpu_us_per_event']:.1f}"
        lines.append(f"| {side} | {cpu} | {ratio} | {c['gap_p50_ms']:.2f} | {c['gap_p99_ms']:.2f} | "
                     f"{c['gap_p99_added_ms']:+.2f} | {c['streams']} ({c['failed']}) |")
    added = summary["ttfb_added_ms"]
    lines += ["", f"Time to the first event of an instant stream (one client, {summary['ttfb_streams_per_side']} "
                  f"sequential streams per side), p50: direct {summary['ttfb_ms']['direct']:.3f} ms; added: relay "
                  f"{added['relay']:+.3f} ms, uvloop relay {added['relay_uvloop']:+.3f} ms, router "
                  f"{added['router']:+.3f} ms.",
              f"Router RSS: {summary['idle_rss']:.1f} MB idle, {summary['peak_rss']:.1f} MB peak; ready "
              f"{summary['ready_s']:.2f} s after start.", ""]
    return "\n".join(lines)


def render_charts(summary: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no charts (pip install matplotlib)")
        return
    connections = list(summary["json"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for side, style in (("direct", "o-"), ("relay", "s--"), ("relay_uvloop", "d--"), ("router", "^-")):
        axes[0].plot(connections, [summary["json"][c][side]["p50_ms"] for c in connections], style, label=side)
        axes[1].plot(connections, [summary["json"][c][side]["p99_ms"] for c in connections], style, label=side)
    for ax, title in zip(axes, ("JSON p50 latency", "JSON p99 latency"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(connections, [str(c) for c in connections])
        ax.set_yscale("log")
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    steps = [name for name, step in summary["streams"].items() if step["router"]["cpu_us_per_event"] is not None]
    steps.append("paced crowd")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.27
    for index, (side, label) in enumerate((("relay", "relay"), ("relay_uvloop", "uvloop relay"),
                                           ("router", "router"))):
        rates, cpu = [], []
        for name in steps:
            if name == "paced crowd":
                rates.append(0.0)
                cpu.append(summary["crowd"][side]["cpu_us_per_event"])
            else:
                rates.append(summary["streams"][name][side]["rps"]["median"])
                cpu.append(summary["streams"][name][side]["cpu_us_per_event"])
        positions = [i + (index - 1) * width for i in range(len(steps))]
        axes[0].bar(positions[:-1], rates[:-1], width, label=label)
        axes[1].bar(positions, cpu, width, label=label)
    axes[0].set_xticks(range(len(steps) - 1), [s.replace(", ", "\n") for s in steps[:-1]], fontsize=7)
    axes[0].set_ylabel("streams/s (one core)")
    axes[0].set_yscale("log")
    axes[0].set_title("Streams per second")
    axes[1].set_xticks(range(len(steps)), [s.replace(", ", "\n") for s in steps], fontsize=7)
    axes[1].set_ylabel("µs of CPU per event")
    axes[1].set_title("CPU per event")
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Streaming: relay, uvloop relay and router, same run, each pinned to one core")
    fig.tight_layout()
    fig.savefig(out / "streams.png", dpi=110)
    plt.close(fig)
