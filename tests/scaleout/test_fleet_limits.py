"""Client limits enforced across a fleet: four `router serve` processes sharing one Redis.

Each test starts real daemons through the CLI (one port each, the same policy), one
fake provider in the test process that they all forward to, and a real
redis-server (`redis_server`). Traffic goes round robin over the four, so no single
process sees more than a quarter of it: only a shared bucket can hold the fleet to
the client's limit. The memory-backend baseline runs the same fleet without Redis
and shows what the Redis tests would measure if nothing were shared.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from router.mock import Ok
from tests.scaleout.conftest import RedisServer
from tests.scaleout.fleet import (
    CHARS_PER_TOKEN,
    Outcome,
    assert_429s_carry_retry_after,
    backend_errors,
    chat_bytes,
    fleet_policy,
    offer,
    post,
    redis_state,
    run_routers,
    session,
    windows,
)
from tests.server.helpers import bearer

ROUTERS = 4
L = 40  # requests_per_second of the client
B = 10  # its burst
RUN_S = 5  # seconds of offered load in the Redis rate test


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_four_routers_on_redis_admit_the_client_limit_together(
        redis_server: RedisServer, fake_provider: Any, tmp_path: Path) -> None:
    """Offered 2L/s for RUN_S s over 4 daemons: per window <= L*1.01 + B, total in [0.95 L T, L T 1.01 + B].

    Measured (L=40, B=10, T=5, 400 requests offered): windows [49, 40, 40, 40, 40],
    total 209 (bounds 190..212); every 429 carried Retry-After.
    """
    fake = await fake_provider("fake")
    policy = fleet_policy(fake, limits={"requests_per_second": L, "burst": B}, state=redis_state(redis_server, ROUTERS))
    async with asyncio.timeout(60), run_routers(tmp_path, policy, ROUTERS) as routers, session() as http:
        outcomes = await offer(http, [r.chat_url for r in routers], 2 * L, RUN_S)
        errors = await backend_errors(http, routers)
    per_window = windows(outcomes)
    admitted = sum(per_window)
    print(f"redis fleet: windows {per_window}, total {admitted}, "
          f"bounds {0.95 * L * RUN_S:g}..{L * RUN_S * 1.01 + B:g}")
    assert_429s_carry_retry_after(outcomes)
    assert errors == 0, "a Redis call failed: the daemons fell back to local limits"
    assert all(n <= L * 1.01 + B for n in per_window), per_window
    assert 0.95 * L * RUN_S <= admitted <= L * RUN_S * 1.01 + B, per_window
    # Every daemon served its share: the limit was shared, not enforced by one of them.
    assert fake.total_hits == admitted


@pytest.mark.slow
async def test_four_routers_with_memory_state_admit_each_their_own_limit(
        fake_provider: Any, tmp_path: Path) -> None:
    """The baseline: without shared state each of the 4 daemons admits L, so the fleet admits ~4L.

    Offered 5L/s (so that 4L can show) for 3 s. Measured (L=40, B=10): windows [196, 160, 160],
    total 516 (4 x (B + 3L) = 520), against the Redis test's bound L*1.01 + B = 50.4 per window.
    """
    duration = 3
    fake = await fake_provider("fake")
    policy = fleet_policy(fake, limits={"requests_per_second": L, "burst": B}, state={"backend": "memory"})
    async with asyncio.timeout(60), run_routers(tmp_path, policy, ROUTERS) as routers, session() as http:
        outcomes = await offer(http, [r.chat_url for r in routers], 5 * L, duration)
    per_window = windows(outcomes)
    admitted = sum(per_window)
    print(f"memory fleet: windows {per_window}, total {admitted}")
    assert_429s_carry_retry_after(outcomes)
    assert all(n > 2 * L for n in per_window[:duration]), per_window
    assert admitted > 2 * L * duration, per_window


TPM = 1200  # client tokens_per_minute: bucket capacity 1200, refilled at 20 tokens/s
TOKEN_RUN_S = 3.0
TOKEN_WORKERS = 64  # concurrent clients, 16 per daemon
SLOW_S = 0.7  # the provider's answer time
ANSWER = "x" * 400  # completion: 100 tokens in the fake's usage


@pytest.mark.slow
async def test_token_limit_overshoot_is_bounded_by_in_flight_debt(
        redis_server: RedisServer, fake_provider: Any, tmp_path: Path) -> None:
    """Token limit across 4 daemons, with answers that use far more than the router reserved.

    Client: `tokens_per_minute` TPM (capacity C = TPM, rate r = TPM/60 per s). Each request
    reserves est = len(body)//4 + max_tokens (max_tokens 1) and the provider, 0.7 s later, reports
    usage u = prompt + 100 completion tokens. TOKEN_WORKERS clients loop for D = TOKEN_RUN_S s.

    Reservations are atomic in Redis, so at any admission the reserved tokens plus the debts
    already charged are within C + r*t. The debt (u - est) of a request is charged when it
    finishes, so what is used can exceed that only by what was still in flight:

        used <= C + r*D + max_in_flight * (u - est)                      (the bound)
        sum(est of admitted) <= C + r*D                                  (reservations exact)

    and the debt stays in the bucket: afterwards the client is refused for (level + est - C)/r.

    Measured (C=1200, r=20/s, D=3, est=24, u=103): 50 admitted (sum est 1200 <= 1260),
    max in flight 50, used 5150, allowance C + r*D = 1260, overshoot 3890 <= bound 50 * 79 = 3950;
    Redis level afterwards 5134; the next request: 429 with Retry-After 196 s (the debt is paid
    back at 20 tokens/s). With memory state the same run admitted 65 (sum est 1560 > 1260) and used
    6695 (overshoot 5435 > bound 64 * 79 = 5056): both assertions fail without the shared bucket.
    """
    fake = await fake_provider("fake")
    fake.set_default(Ok(content=ANSWER, delay_s=SLOW_S))
    policy = fleet_policy(fake, limits={"tokens_per_minute": TPM}, state=redis_state(redis_server, ROUTERS))
    capacity, rate = float(TPM), TPM / 60.0
    body = chat_bytes("count tokens", max_tokens=1)
    estimate = len(body) // CHARS_PER_TOKEN + 1
    async with asyncio.timeout(60), run_routers(tmp_path, policy, ROUTERS) as routers, session() as http:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        outcomes: list[Outcome] = []

        async def client(url: str) -> None:
            while loop.time() - t0 < TOKEN_RUN_S:
                outcome = await post(http, url, body, t0, bearer())
                outcomes.append(outcome)
                if outcome.status != 200:
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(client(routers[i % ROUTERS].chat_url) for i in range(TOKEN_WORKERS)))
        await asyncio.sleep(0.3)  # the last debts are written in the background
        after = await post(http, routers[0].chat_url, body, t0, bearer())
        level = _bucket_level(redis_server, "fleet:client:web:tokens")
        elapsed = loop.time() - t0
        errors = await backend_errors(http, routers)
    assert errors == 0, "a Redis call failed: the daemons fell back to local limits"
    assert_429s_carry_retry_after(outcomes)
    ok = [o for o in outcomes if o.status == 200]
    usages = [_total_tokens(o.body) for o in ok]
    used = sum(usages)
    debt = max(usages) - estimate
    in_flight = _max_overlap([(o.sent, o.done) for o in ok])
    allowance = capacity + rate * TOKEN_RUN_S
    bound = in_flight * debt
    print(f"tokens: admitted {len(ok)} (sum est {len(ok) * estimate}), est {estimate}, usage {max(usages)}, "
          f"max in flight {in_flight}, used {used}, allowance {allowance:g}, overshoot {used - allowance:g}, "
          f"bound {bound}; then {after.status} Retry-After {after.retry_after}; level {level:.0f}")
    assert debt > 0, "the provider's usage must exceed the router's estimate for this test to mean anything"
    assert len(ok) * estimate <= allowance  # the 4 daemons reserved from one bucket
    assert used - allowance <= bound
    # The debt was charged: the bucket holds what was used (less what drained), and the client waits it out.
    assert used - rate * elapsed <= level <= used
    assert after.status == 429 and after.retry_after is not None
    assert int(after.retry_after) >= (used - rate * elapsed + estimate - capacity) / rate


def _bucket_level(server: RedisServer, key: str) -> float:
    reply = server.command("HGET", key, "level")
    assert reply.startswith("$") and not reply.startswith("$-1"), reply
    return float(reply.split("\r\n")[1])


def _total_tokens(body: bytes) -> int:
    usage = json.loads(body)["usage"]
    return int(usage["prompt_tokens"]) + int(usage["completion_tokens"])


def _max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    current = best = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best

