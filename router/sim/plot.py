"""`--plot FILE.png`: each provider's share of the answers over time, and the success rate over time.

matplotlib is an optional dependency (`pip install 'llm-router[plot]'`): `require_matplotlib` is
called before the simulation runs, so a missing one is reported before any time is spent.
"""

from __future__ import annotations

import math
from typing import Any

from router.sim.driver import FAILED, Outcomes
from router.sim.profile import FaultProfile

INSTALL_HINT = "--plot needs matplotlib: pip install 'llm-router[plot]'"
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


class PlotUnavailable(RuntimeError):
    pass


def require_matplotlib() -> Any:
    """The pyplot module, on the non-interactive Agg backend; PlotUnavailable with the install hint."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(outcomes: Outcomes, profile: FaultProfile, path: str, *, span_s: float, title: str) -> None:
    """Write the chart: one point per bucket of arrivals (1% of the duration, at least 1 s)."""
    plt = require_matplotlib()
    width = max(1.0, span_s / 100.0)
    count = max(1, math.ceil(span_s / width))
    names = outcomes.providers
    totals, answered = [0] * count, [0] * count
    by_provider = [[0] * count for _ in names]
    for t, index in zip(outcomes.schedule.arrivals, outcomes.served, strict=True):
        bucket = min(count - 1, int(t / width))
        totals[bucket] += 1
        if index != FAILED:
            answered[bucket] += 1
            by_provider[index][bucket] += 1
    x = [(k + 0.5) * width for k in range(count)]
    figure, (shares, success) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5),
                                             gridspec_kw={"height_ratios": [3, 2]})
    for i, name in enumerate(names):
        values = [100.0 * n / a if a else math.nan for n, a in zip(by_provider[i], answered, strict=True)]
        shares.plot(x, values, label=name, color=_COLOURS[i % len(_COLOURS)], linewidth=1.6)
    shares.set_ylabel("share of the answers (%)")
    shares.set_ylim(-2, 102)
    shares.legend(loc="upper right", fontsize="small")
    shares.set_title(title, fontsize="medium")
    rates = [100.0 * a / n if n else math.nan for a, n in zip(answered, totals, strict=True)]
    success.plot(x, rates, color="black", linewidth=1.4)
    success.set_ylabel("success rate (%)")
    low = min((r for r in rates if not math.isnan(r)), default=100.0)
    success.set_ylim(max(0.0, min(low, 99.0) - 2.0), 100.5)
    success.set_xlabel("seconds (requests by arrival)")
    for axes in (shares, success):
        axes.grid(True, alpha=0.3)
        for name, outage in profile.outages:
            axes.axvspan(outage.start_s, outage.end_s, color=_COLOURS[names.index(name) % len(_COLOURS)],
                         alpha=0.12, linewidth=0)
    if profile.outages:
        success.text(0.01, 0.04, "shaded: " + ", ".join(f"{n} {o.kind} {o.start_s:g}-{o.end_s:g} s"
                                                        for n, o in profile.outages),
                     transform=success.transAxes, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
