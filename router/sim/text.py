"""`router simulate`'s text output: the report's figures, compact enough to read at a glance.

Every figure is defined in report.py; the legend at the end says the same in a few words, so the
output can be pasted into a ticket and still be read right.
"""

from __future__ import annotations

from router.sim.report import Recovery, Report


def render(report: Report, *, title: str) -> str:
    lines = [title, _offered(report)]
    lines.extend(f"  note: {note}" for note in report.notes)
    if report.instant_providers:
        lines.append(f"  not in the profile, so instant and never failing: {', '.join(report.instant_providers)}")
    lines += ["", *_summary(report), "", *_providers(report), "", *_windows(report)]
    if report.recoveries:
        lines += ["", "outages (recovery: from the outage's end)"]
        lines.extend(_recovery(r) for r in report.recoveries)
    lines += ["", _LEGEND]
    return "\n".join(lines)


def _offered(report: Report) -> str:
    return (f"{report.requests:,} requests over {report.span_s:g} s (Poisson arrivals, {report.rate_per_s:g}/s), "
            f"{report.stream_percent:g}% streams, seed {report.seed}; the last one ended at {report.end_s:.1f} s")


def _summary(report: Report) -> list[str]:
    failed = report.requests - report.succeeded
    failures = ", ".join(f"{count:,} {label}" for label, count in sorted(report.failures.items(),
                                                                         key=lambda item: -item[1]))
    latency = "   ".join(f"{name} {_seconds(value)}" for name, value in report.latency_s.items())
    return [
        f"success rate       {_percent(report.success_rate, 2):>8}   ({report.succeeded:,} answered"
        + (f"; {failed:,} failed: {failures})" if failed else ")"),
        f"attempts/request   {report.attempts_per_request:>8.3f}   (mean; max {report.max_attempts})",
        f"upstream load      {report.load_multiplier:>7.3f}x   ({report.upstream_attempts:,} attempts reached a "
        "provider)",
        f"latency            {latency}",
    ]


def _providers(report: Report) -> list[str]:
    lines = [f"{'provider':<16}{'attempts':>10}{'share':>8}{'served':>10}{'share':>8}   what it did with the attempts"]
    for p in report.providers.values():
        did = ", ".join(f"{label} {count:,}" for label, count in sorted(p.decisions.items(), key=lambda i: -i[1]))
        lines.append(f"{p.name:<16}{p.attempts:>10,}{_percent(p.share, 1):>8}{p.served:>10,}"
                     f"{_percent(p.served_share, 1):>8}   {did or '-'}")
    return lines


def _windows(report: Report) -> list[str]:
    names = list(report.providers)
    width = max(8, *(len(name) + 2 for name in names))
    header = f"{'arrived (s)':<14}{'requests':>9}{'success':>9}{'att/req':>9}" + "".join(
        f"{name:>{width}}" for name in names) + "   (provider columns: share of the answers)"
    lines = [header]
    for w in report.windows:
        label = f"{w.start_s:g}-{w.end_s:g}"
        attempts = f"{w.attempts / w.requests:.2f}" if w.requests else "-"
        shares = "".join(f"{_percent(w.share(name), 0):>{width}}" for name in names)
        outage = f"   {', '.join(w.outages)}" if w.outages else ""
        lines.append(f"{label:<14}{w.requests:>9,}{_percent(w.success_rate, 1):>9}{attempts:>9}{shares}{outage}")
    return lines


def _recovery(r: Recovery) -> str:
    o = r.outage
    back = "never served again" if r.provider_back_s is None else f"serves again after {r.provider_back_s:.1f} s"
    success = "not back to normal" if r.success_back_s is None else \
        f"success rate normal after {r.success_back_s:.0f} s"
    return (f"  {r.provider} {o.kind} {o.start_s:g}-{o.end_s:g} s: {r.requests_during:,} requests during it, "
            f"{_percent(r.success_during, 1)} answered; {r.provider} {back}; {success}")


def _percent(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


_LEGEND = """\
legend: success = a complete answer (a stream through [DONE]); attempts/request = the router's attempts;
upstream load = attempts that reached a provider / requests; latency = answered requests, to the JSON body
or a stream's first event; share = of the attempts that reached a provider; served = of the answers.
Recovery: "serves again" = from the outage's end to the arrival of the first request that provider
answered; "success rate normal" = to the first 5 s of arrivals within 2 points of the rate seen with no
outage in progress or over in the last 60 s."""
