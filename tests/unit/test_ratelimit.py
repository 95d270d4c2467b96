"""The per-key limiter without a Redis server: the sliding-window arithmetic on hand-worked cases, Retry-After, the
in-process counter, overrides, unlimited keys, open access, and failing open when the store errors or hangs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from litestar.testing import TestClient

from features.memory_store import MemoryFeatureStore
from features.redis_store import RedisFeatureStore
from recsvc.app import create_app
from recsvc.errors import RateLimited
from recsvc.metrics import REGISTRY
from recsvc.ratelimit import StoreRateLimiter, allowed, parse_overrides, retry_after
from recsvc.security import OPEN_PRINCIPAL, ConfigError, Principal, hash_key
from recsvc.settings import Settings

ALICE = Principal(key_id="a" * 12, scopes=frozenset({"recs:read"}))
BOB = Principal(key_id="b" * 12, scopes=frozenset({"recs:read"}))
MINUTE = 1_000_000 * 60.0  # the start of a window


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def fail_open(reason: str) -> float:
    return REGISTRY.get_sample_value("recsvc_ratelimit_fail_open_total", {"reason": reason}) or 0.0


async def outcomes(limiter: StoreRateLimiter, who: Principal, n: int) -> list[int | None]:
    """None for an allowed request, the Retry-After seconds for a refused one."""
    out: list[int | None] = []
    for _ in range(n):
        try:
            await limiter.check(who, "recs:read")
            out.append(None)
        except RateLimited as exc:
            assert exc.headers is not None
            out.append(int(exc.headers["Retry-After"]))
    return out


def test_sliding_estimate_and_retry_after_hand_worked() -> None:
    assert allowed(5, cur=4, prev=0, weight=1.0) and not allowed(5, cur=5, prev=0, weight=1.0)
    assert allowed(5, cur=1, prev=5, weight=0.5) and not allowed(5, cur=2, prev=5, weight=0.5)  # 2.5 + 2 + 1 > 5
    # this window is full (10 of 10) half-way through: the next window starts in 30 s, and there the estimate
    # 10 * (1 - e/60) + 0 + 1 <= 10 needs e >= 6 s: 36 s
    assert retry_after(10, cur=10, prev=0, elapsed=30) == 36
    # 4 counted now, 12 in the previous window, 15 s in: 12 * (1 - e/60) + 4 + 1 <= 10 needs e >= 35 s: 20 s more
    assert retry_after(10, cur=4, prev=12, elapsed=15) == 20
    assert retry_after(10, cur=10, prev=0, elapsed=59.99) >= 1
    assert 1 <= retry_after(1, cur=1, prev=50, elapsed=0) <= 60


async def test_in_process_counter_windows() -> None:
    clock, store = Clock(MINUTE), MemoryFeatureStore()
    limiter = StoreRateLimiter(lambda: store, 5, clock=clock)
    # full at 0 s: 60 s to the next window, where 5 * (1 - e/60) + 1 <= 5 needs 12 s more; capped at one window
    assert await outcomes(limiter, ALICE, 6) == [None] * 5 + [60]
    assert await outcomes(limiter, BOB, 5) == [None] * 5  # each key has its own budget
    clock.t = MINUTE + 90  # 30 s into the next window: the previous 5 weigh 2.5, so 2 more fit (2.5 + 2 <= 5)
    # refused with cur 2, prev 5: 5 * (1 - e/60) + 2 + 1 <= 5 needs e >= 36 s: 6 s from now
    assert await outcomes(limiter, ALICE, 3) == [None, None, 6]
    clock.t = MINUTE + 240  # two windows on: nothing is remembered
    assert await outcomes(limiter, ALICE, 6) == [None] * 5 + [60]


async def test_overrides_unlimited_and_open_access() -> None:
    clock, store = Clock(MINUTE), MemoryFeatureStore()
    limiter = StoreRateLimiter(lambda: store, 2, overrides={"a" * 12: 0, "b" * 12: 3}, clock=clock)
    assert await outcomes(limiter, ALICE, 50) == [None] * 50  # 0: unlimited
    assert await outcomes(limiter, BOB, 4) == [None] * 3 + [60]
    assert await outcomes(limiter, OPEN_PRINCIPAL, 10) == [None] * 10  # open access (the demo) is not limited
    assert await outcomes(limiter, Principal("c" * 12, frozenset()), 3) == [None, None, 60]  # everyone else: 2


def test_parse_overrides() -> None:
    kid = hash_key("web")[:12]
    assert parse_overrides(f" {kid}=120 , {'f' * 12}=0") == {kid: 120, "f" * 12: 0}
    assert parse_overrides("") == {}
    for bad, message in [("web=10", "keyid=N"), (f"{kid}=ten", "whole number"), (f"{kid}=-1", "0 \\(unlimited\\)"),
                         (f"{kid}", "keyid=N")]:
        with pytest.raises(ConfigError, match=message):
            parse_overrides(bad)
    with pytest.raises(ConfigError):
        StoreRateLimiter(lambda: None, -1)


async def test_fails_open_when_redis_refuses_then_backs_off() -> None:
    dead = RedisFeatureStore.from_url("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.5)
    clock = Clock(MINUTE)
    limiter = StoreRateLimiter(lambda: dead, 1, clock=clock)
    errors, backoffs = fail_open("error"), fail_open("backoff")
    try:
        assert await outcomes(limiter, ALICE, 3) == [None, None, None]  # limit 1, but nothing could be counted
        assert (fail_open("error") - errors, fail_open("backoff") - backoffs) == (1, 2)  # one try, then a pause
        clock.t += 1.5  # the pause is over: it tries again (and fails open again)
        assert await outcomes(limiter, ALICE, 1) == [None]
        assert fail_open("error") - errors == 2
    finally:
        await dead.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: Redis hung."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_fails_open_when_redis_hangs(silent_server: int) -> None:
    hung = RedisFeatureStore.from_url(f"redis://127.0.0.1:{silent_server}/0", prefix="x", timeout_s=0.05)
    limiter = StoreRateLimiter(lambda: hung, 1, clock=Clock(MINUTE))
    errors = fail_open("error")
    try:
        start = asyncio.get_running_loop().time()
        assert await outcomes(limiter, ALICE, 2) == [None, None]
        assert asyncio.get_running_loop().time() - start < 0.5  # the store's timeout, once; then the pause
        assert fail_open("error") - errors == 1
    finally:
        await hung.close()


KEYS = "reader=recs:read,ops=admin"


def test_the_app_limits_per_key_by_default_with_the_embedded_store() -> None:
    app = create_app(Settings(load_models=False, api_keys=KEYS, log_json=False, rate_limit_per_minute=3,
                              rate_limits=f"{hash_key('ops')[:12]}=0"), store=MemoryFeatureStore())
    with TestClient(app) as c:
        reader = {"Authorization": "Bearer reader"}
        codes = [c.get("/v1/catalog/items/A", headers=reader).status_code for _ in range(4)]
        assert codes == [404, 404, 404, 429]
        r = c.get("/v1/catalog/items/A", headers=reader)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited" and 1 <= int(r.headers["retry-after"]) <= 60
        assert [c.get("/v1/catalog/items/A", headers={"Authorization": "Bearer ops"}).status_code
                for _ in range(5)] == [404] * 5  # override 0: unlimited
        assert all(c.get("/health").status_code == 200 for _ in range(5))  # open routes are never limited


def test_open_access_and_a_zero_limit_install_no_limiter() -> None:
    with TestClient(create_app(Settings(load_models=False, open_access=True, log_json=False, rate_limit_per_minute=1),
                               store=MemoryFeatureStore())) as c:
        assert [c.get("/v1/catalog/items/A").status_code for _ in range(3)] == [404] * 3
    with TestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False, rate_limit_per_minute=0),
                               store=MemoryFeatureStore())) as c:
        assert [c.get("/v1/catalog/items/A", headers={"Authorization": "Bearer reader"}).status_code
                for _ in range(3)] == [404] * 3
