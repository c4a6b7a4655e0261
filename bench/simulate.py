"""How long `router simulate` takes for 100,000 requests, and where that time goes.

    python bench/simulate.py                      # 3 runs of the CLI, 100,000 requests each (~30 s)
    python bench/simulate.py --breakdown          # plus a profile: router, simulator, asyncio, tenacity
    python bench/simulate.py --requests 30000 --repeat 5 -c POLICY --faults FAULTS.yaml

Each run is `python -m router.sim -c POLICY --faults FAULTS --requests N --json` in a subprocess, as a
user runs it (interpreter start, imports and the report included). Printed: wall time and CPU time
(user + system) of each run, and µs of wall time per request. The target (issue: `router simulate`)
is 100,000 requests in at most 10 s on the project's 2-core VM.

`--breakdown` runs the simulation once more in this process under cProfile (slower: the split is
what counts, not the total) and adds up the time spent in each owner's code: the router (engine,
upstream transport, health), tenacity (the engine's retry loop), the simulator (router/sim) and
asyncio's machinery (tasks, futures, handles, timeouts).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # `python bench/simulate.py` as well as `python -m bench.simulate`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
POLICY = "policies/aimo-asi1.yaml"
FAULTS = "policies/faults/aimo-outage.yaml"


def one_run(policy: str, faults: str, requests: int) -> tuple[float, float, dict[str, object]]:
    """(wall s, CPU s, the --json object) of one CLI run."""
    before = os.times()
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "router.sim", "-c", policy, "--faults", faults, "--requests",
                             str(requests), "--json"], capture_output=True, text=True, cwd=REPO, check=True)
    wall = time.perf_counter() - began
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, json.loads(result.stdout)


def owner(filename: str, function: str) -> str:
    if "/router/sim/" in filename:
        return "simulator (router/sim)"
    if "/router/" in filename:
        return "router (engine, transport, health, policy)"
    if "tenacity" in filename or filename.endswith("inspect.py"):
        return "tenacity (the engine's retry loop; with inspect)"
    if "asyncio" in filename or "_contextvars" in function or "_asyncio" in function or "heapq" in function:
        return "asyncio machinery (tasks, futures, handles, timeouts)"
    if "importlib" in filename or filename.startswith("<frozen") or "ssl" in function or "site-packages" in filename:
        return "start-up (imports, TLS contexts)"
    return "other (builtins, json, random, ...)"


def breakdown(policy: str, faults: str, requests: int) -> list[tuple[str, float]]:
    from router.sim.profile import check_against, load_profile
    from router.sim.simulate import load_simulation_policy, simulate

    loaded, _ = load_simulation_policy(policy)
    profile = load_profile(faults)
    check_against(profile, loaded)
    profiler = cProfile.Profile()
    profiler.runcall(simulate, loaded, profile, requests=requests)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    shares: Counter[str] = Counter()
    for (filename, _line, function), (_cc, _nc, own, _cum, _callers) in stats.items():
        shares[owner(filename, function)] += own
    total = sum(shares.values())
    return [(name, seconds / total) for name, seconds in shares.most_common()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default=POLICY)
    parser.add_argument("--faults", default=FAULTS)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="also profile one run (20,000 requests)")
    args = parser.parse_args()
    print(f"router simulate -c {args.config} --faults {args.faults} --requests {args.requests:,} "
          f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    walls = []
    for index in range(args.repeat):
        wall, cpu, data = one_run(args.config, args.faults, args.requests)
        walls.append(wall)
        print(f"  run {index + 1}: {wall:6.2f} s wall, {cpu:6.2f} s CPU, {1e6 * wall / args.requests:6.1f} µs/request;"
              f" success {data['success_rate']:.4f}, attempts/request {data['attempts_per_request']:.4f}")
    print(f"  median {statistics.median(walls):.2f} s, best {min(walls):.2f} s")
    if args.breakdown:
        print("where the time goes (cProfile, own time by owner, 20,000 requests):")
        for name, share in breakdown(args.config, args.faults, min(args.requests, 20_000)):
            print(f"  {100 * share:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
