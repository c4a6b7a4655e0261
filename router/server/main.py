"""`router serve`: run the daemon until SIGTERM/SIGINT; SIGHUP (or --watch) reloads the policy.

Shutdown: /readyz starts failing, the listening socket closes, in-flight requests
and streams get up to `server.drain_timeout_s` to finish, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from router.clock import SystemClock
from router.errors import PolicyError
from router.observe.prometheus import PrometheusObserver
from router.observe.recent import RecentActivity, Tee
from router.observe.tracing import from_environment
from router.policy import load_policy
from router.policy.model import Policy
from router.router import Router
from router.server.access_log import LineSink, use_sink
from router.server.admin import create_admin_app
from router.server.aiohttp_internals import close_idle_connections
from router.server.app import create_app
from router.server.context import CONTEXT, ServerContext
from router.server.demo import start_demo_providers, stop_demo_providers
from router.server.front import FrontSite, aiohttp_limits
from router.server.workers import WorkerInfo

log = logging.getLogger("router.server")
WATCH_INTERVAL_S = 1.0
# After our own drain (see _drain), how long aiohttp's shutdown waits before cancelling what is left.
CANCEL_GRACE_S = 0.1


def setup_logging(level: str) -> None:
    """Plain lines for operators on stderr; the access log's JSON lines on stdout."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    # Access lines bypass `logging` (see access_log.py) and go to stdout in batches.
    use_sink(LineSink(sys.stdout))
    # aiohttp logs failed client connections with tracebacks at ERROR; we report them ourselves.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def serve(*, config: str, host: str | None = None, port: int | None = None, watch: bool = False,
          log_level: str = "info", workers: int = 1, worker: str | None = None,
          worker_dir: str | None = None) -> int:
    setup_logging(log_level)
    try:
        policy = load_policy(config)
    except PolicyError as exc:
        log.error("cannot start: %s", exc)
        return 2
    host = host or policy.server.host
    port = policy.server.port if port is None else port
    if workers > 1 and policy.server.admin is not None:
        log.error("cannot start: server.admin needs one process (each worker keeps its own state); run "
                  "without --workers, or one replica per port with Redis for shared limits")
        return 2
    if workers > 1:
        from router.server.supervisor import supervise

        return asyncio.run(supervise(policy, config, host, port, workers, watch=watch, log_level=log_level))
    info = None
    if worker is not None and worker_dir is not None:
        index, _, count = worker.partition("/")
        info = WorkerInfo(int(index), int(count), worker_dir)
    try:
        loop_factory = event_loop_factory(policy.server.event_loop)
    except ImportError:
        log.error("cannot start: server.event_loop is uvloop, which is not installed (pip install uvloop)")
        return 2
    log.debug("event loop: %s", "asyncio" if loop_factory is None else "uvloop")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_daemon(policy, config, host, port, watch=watch, worker=info))


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`server.event_loop`: uvloop's loop (its transports cost less per read and write: streams ~9%,
    JSON ~3% less CPU a request in bench/run.py), or asyncio's own (None). `auto` takes uvloop where it is
    installed. Raises ImportError for `uvloop` when it is not."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def reload_policy(context: ServerContext, path: str) -> bool:
    """Validate the file and swap atomically; an invalid file leaves the old policy serving."""
    try:
        policy = load_policy(path)
        context.router.reload(policy)
    except PolicyError as exc:
        log.error("policy reload rejected, the previous policy keeps serving: %s", exc)
        context.count_reload(False)
        context.loaded(path, str(exc))
        return False
    context.adopt()
    context.count_reload(True)
    context.loaded(path)
    log.info("policy reloaded from %s", path)
    log_egress(policy)
    return True


def log_egress(policy: Policy) -> None:
    """How each provider is reached, when it is not plainly: through a proxy, or without checking its
    certificate (which an operator must never miss)."""
    for provider in policy.providers.values():
        if provider.proxy is not None:
            log.info("provider %s: through the proxy %s (from %s)", provider.name, provider.proxy.url,
                     provider.proxy.variable)
        if not provider.tls.verify:
            log.warning("provider %s: TLS certificate verification is OFF (tls.allow_insecure); its API key "
                        "goes to whoever answers at %s", provider.name, provider.base_url)


async def _watch(path: str, context: ServerContext) -> None:
    def stamp() -> tuple[float, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return info.st_mtime, info.st_size

    last = stamp()
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        current = stamp()
        if current is not None and current != last:
            last = current
            reload_policy(context, path)


async def _drain(runner: web.AppRunner, context: ServerContext, timeout_s: float) -> None:
    """Stop accepting connections, then give in-flight requests up to `timeout_s` to finish.

    aiohttp's own `shutdown_timeout` is not a drain bound: it waits that long, then only fails the
    handlers' body reads (a handler waiting on a provider does not notice) and waits that long
    again, and it treats 0 as "no limit". So the daemon drains its own tracked requests.
    """
    for site in list(runner.sites):
        await site.stop()
    close_idle_connections(runner)  # idle keep-alive connections: close now, not after the drain
    pending = [task for task in context.in_flight if not task.done()]
    if pending and timeout_s > 0:
        await asyncio.wait(pending, timeout=timeout_s)


async def _start_admin(context: ServerContext, path: str, policy: Policy) -> web.AppRunner | bool | None:
    """The admin listener, if `server.admin` is set: its runner, None when off, False when it cannot listen."""
    admin = policy.server.admin
    if admin is None:
        return None
    runner = web.AppRunner(create_admin_app(context, lambda: reload_policy(context, path)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, admin.host, admin.port).start()
    except OSError as exc:
        log.error("cannot listen for the admin API on %s:%d: %s", admin.host, admin.port, exc.strerror or exc)
        await runner.cleanup()
        return False
    bound = runner.addresses[0]
    log.info("admin API on http://%s:%d/admin/ (%s)", bound[0], bound[1],
             "key required" if admin.key is not None else "loopback, no key")
    return runner


def _ignore_during_drain(sig: signal.Signals) -> None:
    log.info("draining already: %s ignored", sig.name)


async def run_daemon(policy: Policy, path: str, host: str, port: int, *, watch: bool = False,
                     ready: asyncio.Event | None = None, worker: WorkerInfo | None = None) -> int:
    """Serve until SIGTERM/SIGINT. As one of `--workers N` (`worker`), the supervisor runs the
    demo providers, the port is shared (SO_REUSEPORT) and /metrics covers every worker."""
    demo = await start_demo_providers(policy) if worker is None else []
    observer = PrometheusObserver()
    share = 1.0 / worker.count if worker is not None and policy.state.backend == "memory" else 1.0
    clock = SystemClock()
    recent = RecentActivity(clock) if policy.server.admin is not None else None
    try:
        tracing = from_environment(os.environ)
    except (ImportError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        await stop_demo_providers(demo)
        return 2
    router = Router(policy, observer=observer if recent is None else Tee(observer, recent), limit_share=share,
                    clock=clock, tracing=tracing)
    await router.start()
    app = create_app(router, observer=observer)
    context = app[CONTEXT]
    context.worker = worker
    context.recent = recent
    context.loaded(path)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=CANCEL_GRACE_S,
                           **aiohttp_limits(policy.server))
    await runner.setup()
    try:
        site = FrontSite(runner, host, port, reuse_port=worker is not None or None)
        await site.start()
        if worker is not None:
            await web.UnixSite(runner, worker.socket_path()).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
        await runner.cleanup()
        await stop_demo_providers(demo)
        return 1
    admin = await _start_admin(context, path, policy)
    if admin is False:
        await runner.cleanup()
        await stop_demo_providers(demo)
        return 1
    log_egress(policy)
    log.info("listening on http://%s:%d/v1 (policy %s, %d routes%s)", host, port, path, len(policy.routes),
             f", worker {worker.index + 1} of {worker.count}" if worker is not None else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_policy, context, path)
    watcher = asyncio.create_task(_watch(path, context)) if watch else None
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        context.draining = True
        log.info("draining: up to %gs for in-flight requests", router.policy.server.drain_timeout_s)
        # Stay deaf to further signals rather than fall back to their default action: under
        # `--workers`, Ctrl-C or a group-wide SIGTERM reaches a worker twice (directly and forwarded
        # by the supervisor), and the second one must not kill it in the middle of its drain.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, _ignore_during_drain, sig)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await _drain(runner, context, router.policy.server.drain_timeout_s)
        await site.shutdown(CANCEL_GRACE_S)  # the fast front's leftovers, as runner.cleanup does aiohttp's
        await runner.cleanup()  # cancels whatever outlived the drain (and its upstream request)
        if admin is not None:
            await admin.cleanup()
        await stop_demo_providers(demo)
        if tracing is not None:
            tracing.shutdown()  # the spans still batched
        use_sink(None)  # flushes the last access lines
        log.info("stopped")
    return 0
