"""Large budgets are reserved in blocks: one script call per block of requests instead of one per request, the
block counted in Redis at once (so other workers see it), and every request checked alone once a block no longer
fits under the limit."""

from __future__ import annotations

import pytest

from features.redis_store import RedisFeatureStore
from recsvc.errors import RateLimited
from recsvc.ratelimit import RedisCounter, StoreRateLimiter
from recsvc.security import Principal

WHO = Principal("b" * 12, frozenset({"recs:read"}))
START = 60.0 * 2_000_000  # the start of a window


class Counting(RedisCounter):
    def __init__(self, store: RedisFeatureStore) -> None:
        super().__init__(store)
        self.calls = 0

    async def hit(self, key_id: str, limit: int, window: int, weight: float, block: int = 1) -> tuple[int, int, int]:
        self.calls += 1
        return await super().hit(key_id, limit, window, weight, block)


async def test_a_large_budget_is_reserved_a_block_at_a_time(redis_url: str, redis_prefix: str) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    clock = [START + 1]
    limiter = StoreRateLimiter(lambda: store, 200_000, clock=lambda: clock[0])
    counter = limiter._counter = Counting(store)
    limiter._counter_of = store
    try:
        for _ in range(250):
            await limiter.check(WHO, "recs:read")
        assert counter.calls == 3  # blocks of 100 (a thousandth of the limit): 100 + 100 + 50 of the third
        key = counter.key(WHO.key_id, int(clock[0] // 60))
        assert int(await store.client.get(key)) == 300  # reserved blocks count at once, for every worker to see
        clock[0] = START + 61  # a new window: the rest of the old block is not spent in it
        await limiter.check(WHO, "recs:read")
        assert counter.calls == 4
    finally:
        await store.close()


async def test_near_the_limit_every_request_is_checked_alone(redis_url: str, redis_prefix: str) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    limiter = StoreRateLimiter(lambda: store, 2_000, clock=lambda: START + 1)  # blocks of 2
    counter = RedisCounter(store)
    try:
        window = int((START + 1) // 60)
        await store.client.set(counter.key(WHO.key_id, window), 1_999)
        await limiter.check(WHO, "recs:read")  # a block of 2 does not fit: one request, the last one
        assert int(await store.client.get(counter.key(WHO.key_id, window))) == 2_000
        with pytest.raises(RateLimited):
            await limiter.check(WHO, "recs:read")
    finally:
        await store.close()
