"""The `router` command: serve, check, explain, mock, status, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

from router.errors import PolicyError
from router.policy import load_policy
from router.policy.model import Policy, Route
from router.sim import add_parser as add_simulate_parser
from router.status import DEFAULT_URL as DEFAULT_ADMIN_URL

DEFAULT_POLICY = "policies/default.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router",
        description="Resilient request router for OpenAI-compatible LLM APIs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the OpenAI-compatible daemon")
    serve.add_argument("-c", "--config", default=DEFAULT_POLICY,
                       help=f"policy file (default {DEFAULT_POLICY})")
    serve.add_argument("--host", help="listen address (default: the policy's server.host, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: the policy's server.port, else 8080)")
    serve.add_argument("--watch", action="store_true", help="reload the policy when the file changes")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=_positive, default=1,
                       help="processes serving the port (SO_REUSEPORT); use state.backend: redis to share "
                            "limits exactly, else each worker enforces 1/N of every limit (default 1)")
    # Set by the supervisor of --workers for each worker process.
    serve.add_argument("--worker", help=argparse.SUPPRESS)
    serve.add_argument("--worker-dir", help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)

    check = sub.add_parser("check", help="validate policy files and print their routes")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--skip-env", action="store_true",
                       help="do not require the key variables to be set (validate structure only)")
    check.set_defaults(run=_check)

    explain = sub.add_parser("explain", help="print the failover plan of a route")
    explain.add_argument("-c", "--config", default=DEFAULT_POLICY)
    explain.add_argument("route", help="a route name, or a model name matched by a glob route")
    explain.set_defaults(run=_explain)

    mock = sub.add_parser("mock", help="run a fake OpenAI-compatible provider with fault knobs")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9101)
    mock.add_argument("--name", default="mock")
    mock.add_argument("--error-rate", action="append", default=[], metavar="FAULT=RATE",
                      help="e.g. 503=0.1, 429=0.05, reset=0.01; faults: an HTTP status, reset, hang, "
                           "slow, cut, stall, malformed, error_first")
    mock.add_argument("--retry-after", default="1", help="Retry-After sent with 429/503 (default 1)")
    mock.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    mock.add_argument("--chunks", type=int, default=5, help="content chunks per streamed answer")
    mock.add_argument("--interval", type=float, default=0.0, help="seconds between streamed chunks")
    mock.add_argument("--content", default=None, help="answer text")
    mock.add_argument("--seed", type=int, default=None)
    mock.set_defaults(run=_mock)

    status = sub.add_parser("status", help="the live state of a daemon's providers (its admin API) as a table")
    status.add_argument("--url", default=DEFAULT_ADMIN_URL, help=f"the admin listener (default {DEFAULT_ADMIN_URL})")
    status.add_argument("--key-env", default=None, metavar="NAME",
                        help="environment variable holding the admin key (server.admin.key_env)")
    status.add_argument("--watch", action="store_true", help="refresh every 2 s until Ctrl-C")
    status.set_defaults(run=_status)

    add_simulate_parser(sub)
    return parser


def _status(args: argparse.Namespace) -> int:
    from router.status import run

    return run(args.url, args.key_env, watch=args.watch)


# Not secrets: `check --skip-env` reads them from the environment as the daemon would.
_PROXY_VARIABLES = frozenset({"https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"})


class _PlaceholderEnv(Mapping[str, str]):
    """Every variable 'is set', so a policy can be checked where its secrets are not (the proxy
    variables are the real ones)."""

    def __getitem__(self, key: str) -> str:
        if key in _PROXY_VARIABLES:
            return os.environ[key]
        return "placeholder"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _load_or_report(path: str, *, skip_env: bool = False) -> Policy | None:
    try:
        return load_policy(path, env=_PlaceholderEnv() if skip_env else None)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        policy = _load_or_report(path, skip_env=args.skip_env)
        if policy is None:
            failed += 1
            continue
        print(f"{path}: ok ({len(policy.providers)} providers, {len(policy.routes)} routes, "
              f"{len(policy.clients)} clients)")
        for route in policy.routes.values():
            targets = ", ".join(f"{t.provider}:{t.model}@p{t.priority}" for t in route.targets)
            print(f"  {route.name!r:28} -> {targets}")
        for provider in policy.providers.values():
            if provider.proxy is not None:
                print(f"  provider {provider.name!r} through the proxy {provider.proxy.url} "
                      f"(from {provider.proxy.variable})")
            if not provider.tls.verify:
                print(f"  provider {provider.name!r}: TLS certificate verification is OFF (tls.allow_insecure)")
    return 1 if failed else 0


def explain_route(policy: Policy, route: Route, requested: str) -> str:
    """The failover plan of one route as text (also used by tests)."""
    lines = [f"route {route.name!r}" + (f" (matched by {requested!r})" if requested != route.name else "")]
    retry = route.retry
    lines.append(f"  deadline {route.deadline_s:g}s, strategy {route.strategy}"
                 + (f", ttft {route.ttft_s:g}s" if route.ttft_s else ""))
    lines.append(f"  retry: max_attempts {retry.max_attempts}, per target {retry.max_attempts_per_target}, "
                 f"backoff full-jitter {retry.base_interval_s:g}s..{retry.max_interval_s:g}s, "
                 f"wait for preferred up to {retry.wait_for_preferred_s:g}s")
    budget = policy.retry_budget
    lines.append(f"  retry budget: {budget.percent:g}% of requests over {budget.window_s:g}s "
                 f"+ {budget.min_per_second:g}/s")
    if route.strategy == "adaptive":
        adaptive = route.adaptive
        lines.append(f"  adaptive: power of two choices by latency x (in flight + 1) x (1 + recent failures); "
                     f"half-life {adaptive.half_life_s:g}s, explore {adaptive.explore_percent:g}%")
    hedge = route.hedge
    if hedge is None:
        lines.append("  hedge: off")
    else:
        after = f"the p{100 * hedge.after_quantile:g} of the target's time to first byte (until then " \
            f"{hedge.after_s:g}s)" if hedge.after_quantile is not None else f"{hedge.after_s:g}s"
        lines.append(f"  hedge: a second target after {after} without a first byte; "
                     f"at most {hedge.max_percent:g}% of requests over 10s")
    for priority in sorted({t.priority for t in route.targets}):
        tier = [t for t in route.targets if t.priority == priority]
        total = sum(t.weight for t in tier)
        lines.append(f"  tier {priority}:")
        for target in tier:
            provider = policy.providers[target.provider]
            timeouts, breaker = provider.timeouts, provider.breaker
            share = {"weighted": f"{100 * target.weight / total:.0f}%", "least_busy": "least busy",
                     "adaptive": f"adaptive, weight {target.weight:g}"}[route.strategy]
            lines.append(f"    {target.provider} model {target.upstream_model(requested)!r} ({share})")
            lines.append(f"      {provider.chat_url}; timeouts connect {timeouts.connect_s:g}s, "
                         f"first byte {timeouts.first_byte_s:g}s, idle {timeouts.idle_s:g}s")
            lines.append(f"      breaker: {breaker.consecutive_failures} failures -> eject "
                         f"{breaker.base_ejection_s:g}s..{breaker.max_ejection_s:g}s; "
                         f"prefill {'yes' if provider.supports_prefill else 'no'}")
            probe = provider.health_probe
            if probe is not None:
                what = f"POST {provider.chat_url} (a small chat body)" if probe.body is not None \
                    else f"GET {provider.base_url}{probe.path}"
                lines.append(f"      health probe while ejected: {what} every {probe.interval_s:g}s "
                             "(no client request is spent on it)")
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    policy = _load_or_report(args.config)
    if policy is None:
        return 1
    route = policy.find_route(args.route)
    if route is None:
        print(f"error: no route matches {args.route!r}; routes: {', '.join(policy.routes)}", file=sys.stderr)
        return 1
    print(explain_route(policy, route, args.route))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from router.server.main import serve  # the daemon pulls in aiohttp.web; keep `check` light

    return serve(config=args.config, host=args.host, port=args.port, watch=args.watch,
                 log_level=args.log_level, workers=args.workers, worker=args.worker, worker_dir=args.worker_dir)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _mock(args: argparse.Namespace) -> int:
    from router.mock import FakeProvider, Ok, RandomFaults

    rates: dict[str, float] = {}
    for item in args.error_rate:
        key, _, value = item.partition("=")
        try:
            rates[key.strip()] = float(value) if value else 0.1
        except ValueError:
            print(f"error: --error-rate {item!r}: rate must be a number", file=sys.stderr)
            return 2
    try:
        base = Ok(content=args.content, delay_s=args.latency, chunks=args.chunks, interval_s=args.interval)
        fault = RandomFaults(rates, retry_after=args.retry_after, seed=args.seed, base=base) \
            if rates else base
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        provider = FakeProvider(args.name, max_hits=1000)
        provider.set_default(fault)
        url = await provider.start(args.host, args.port)
        print(f"mock provider {args.name!r} at {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await provider.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
