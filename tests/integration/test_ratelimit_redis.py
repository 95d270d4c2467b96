"""The per-key limiter on a real Redis: two app instances (two workers or replicas) share one budget per key, a
refusal is a 429 with Retry-After, the counters live under the store prefix with a TTL, the Lua script survives a
script flush, and overrides apply per key."""

from __future__ import annotations

import pytest
import redis
from litestar.testing import TestClient

from features.redis_store import RedisFeatureStore
from recsvc.app import create_app
from recsvc.errors import RateLimited
from recsvc.ratelimit import KEY_TTL_S, RedisCounter, StoreRateLimiter
from recsvc.security import Principal, hash_key
from recsvc.settings import Settings

KEYS = "reader=recs:read,other=recs:read,ops=admin"
READER = {"Authorization": "Bearer reader"}
OTHER = {"Authorization": "Bearer other"}


def settings_for(redis_url: str, prefix: str, **kw: object) -> Settings:
    return Settings(load_models=False, redis_url=redis_url, redis_prefix=prefix, api_keys=KEYS, log_json=False,
                    redis_timeout_s=2, **kw)  # type: ignore[arg-type]


def test_two_instances_share_one_budget_per_key(redis_url: str, redis_prefix: str) -> None:
    s = settings_for(redis_url, redis_prefix, rate_limit_per_minute=4)
    with TestClient(create_app(s)) as a, TestClient(create_app(s)) as b:
        codes = [a.get("/v1/catalog/items/X", headers=READER).status_code,
                 b.get("/v1/catalog/items/X", headers=READER).status_code,
                 a.get("/v1/catalog/items/X", headers=READER).status_code,
                 b.get("/v1/catalog/items/X", headers=READER).status_code]
        assert codes == [404] * 4  # four of the key's four, spread over two instances
        for client in (a, b):
            r = client.get("/v1/catalog/items/X", headers=READER)
            assert r.status_code == 429, r.text
            assert r.json()["error"] == "rate_limited" and 1 <= int(r.headers["retry-after"]) <= 60
        assert b.get("/v1/catalog/items/X", headers=OTHER).status_code == 404  # another key has its own budget
    r = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in r.scan_iter(match=f"{redis_prefix}:rl:*"))
        reader_id, other_id = hash_key("reader")[:12], hash_key("other")[:12]
        assert {k.rsplit(":", 1)[0] for k in keys} == {f"{redis_prefix}:rl:{{{reader_id}}}",
                                                      f"{redis_prefix}:rl:{{{other_id}}}"}
        assert all(0 < r.ttl(k) <= KEY_TTL_S for k in keys)  # bounded: every counter expires
        # refused requests are not counted: the reader's counters sum to the 4 allowed
        assert sum(int(r.get(k)) for k in keys if reader_id in k) == 4
    finally:
        r.close()


def test_per_key_override(redis_url: str, redis_prefix: str) -> None:
    s = settings_for(redis_url, redis_prefix, rate_limit_per_minute=100, rate_limits=f"{hash_key('other')[:12]}=1")
    with TestClient(create_app(s)) as c:
        assert [c.get("/v1/catalog/items/X", headers=OTHER).status_code for _ in range(2)] == [404, 429]
        assert [c.get("/v1/catalog/items/X", headers=READER).status_code for _ in range(3)] == [404] * 3


async def test_counter_windows_and_script_reload(redis_url: str, redis_prefix: str) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    counter = RedisCounter(store)
    try:
        await store.client.set(counter.key("k" * 12, 99), 6)  # the previous window had 6
        # half-way through window 100: 6 * 0.5 + cur + 1 <= 5 allows cur 0 and 1, refuses at 2
        results = [await counter.hit("k" * 12, 5, 100, 0.5) for _ in range(3)]
        assert results == [(True, 1, 6), (True, 2, 6), (False, 2, 6)]
        assert 0 < await store.client.ttl(counter.key("k" * 12, 100)) <= KEY_TTL_S
        await store.client.script_flush()  # a restarted server forgets scripts: the next call loads it again
        assert await counter.hit("j" * 12, 5, 100, 0.5) == (True, 1, 0)
    finally:
        await store.close()


async def test_limiter_over_redis_raises_with_retry_after(redis_url: str, redis_prefix: str) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    limiter = StoreRateLimiter(lambda: store, 2, clock=lambda: 60.0 * 1_000_000 + 30)  # 30 s into a window
    who = Principal("a" * 12, frozenset({"recs:read"}))
    try:
        await limiter.check(who, "recs:read")
        await limiter.check(who, "recs:read")
        with pytest.raises(RateLimited) as info:
            await limiter.check(who, "recs:read")
        # full at 30 s: 30 s to the next window, where 2 * (1 - e/60) + 1 <= 2 needs e >= 30 s: 60 s
        assert info.value.headers == {"Retry-After": "60"}
    finally:
        await store.close()
