"""`router simulate`: the subcommand's arguments and what it does with them.

`add_parser(subparsers)` registers it on `router`'s parser (router/cli.py); `main(argv)` runs it on
its own (tests, `python -m router.sim`). Errors are reported as `router check` reports them: one
`error: ...` line on stderr naming the file and key path, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_POLICY = "policies/default.yaml"
DEFAULT_SEED = 1  # router.sim.simulate.DEFAULT_SEED; repeated so that `router --help` imports nothing else


def add_parser(subparsers: Any) -> None:
    """Register `simulate` on `router`'s subparsers (the `sub` of router/cli.py's `_parser()`)."""
    parser = subparsers.add_parser(
        "simulate", help="run the policy's router against a fault profile, on virtual time",
        description="Run the real router (planner, classifier, breakers, limits, budgets) with the policy against "
                    "simulated providers that follow a fault profile, on virtual time, and report what it did.")
    _arguments(parser)
    parser.set_defaults(run=run)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_POLICY, help=f"policy file (default {DEFAULT_POLICY})")
    parser.add_argument("--faults", required=True, metavar="FAULTS.yaml", help="the fault profile")
    parser.add_argument("--requests", type=_positive, metavar="N",
                        help="offer N requests at the profile's rate (instead of its duration_s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--plot", metavar="FILE.png", help="chart each provider's share and the success rate over "
                                                           "time (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of every random draw: arrivals, faults, the router's choices "
                             f"(default {DEFAULT_SEED})")
    parser.add_argument("--route", metavar="MODEL",
                        help="the model the requests ask for (default: the policy's first route that is not a glob)")
    parser.add_argument("--client", metavar="NAME", help="send the requests as this client of the policy "
                                                         "(its limits apply; default: no client)")
    parser.add_argument("--windows", type=_positive, default=10, metavar="N",
                        help="rows of the over-time table (default 10: one per 10%% of the duration)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="router simulate", description="See `router simulate --help`.")
    _arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from router.errors import PolicyError
    from router.sim.plot import PlotUnavailable, plot, require_matplotlib
    from router.sim.profile import FaultProfileError, check_against, load_profile
    from router.sim.report import build_report
    from router.sim.simulate import load_simulation_policy, pick_route, simulate
    from router.sim.text import render

    try:
        if args.plot:
            require_matplotlib()  # before the run, not after it
        policy, notes = load_simulation_policy(args.config)
        profile = load_profile(args.faults)
        check_against(profile, policy)
        model, route = pick_route(policy, args.route)
        if args.client is not None and policy.client_named(args.client) is None:
            known = ", ".join(c.name for c in policy.clients) or "none"
            raise LookupError(f"--client {args.client!r}: no such client in {args.config} (clients: {known})")
    except (PolicyError, FaultProfileError, LookupError, PlotUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    began = time.perf_counter()
    try:
        outcomes = simulate(policy, profile, seed=args.seed, requests=args.requests, model=model, client=args.client)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - began
    span = profile.duration_s if args.requests is None else args.requests / profile.rate_per_s
    report = build_report(outcomes, profile, span_s=span, seed=args.seed, windows=args.windows, notes=notes)
    title = (f"router simulate: {args.config} (model {model!r}, route {route.name!r}) against {args.faults}"
             + (f", as client {args.client!r}" if args.client else ""))
    if args.plot:
        try:
            plot(outcomes, profile, args.plot, span_s=span, title=title)
        except OSError as exc:
            print(f"error: cannot write {args.plot}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print(render(report, title=title))
        print(f"(simulated {report.end_s:,.0f} s of traffic in {elapsed:.1f} s"
              + (f"; chart: {args.plot})" if args.plot else ")"))
    return 0
