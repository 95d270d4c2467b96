"""Shared fixtures: a real Redis (unique key prefix per test, cleaned after), temporary data dirs."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

REDIS_URL = os.environ.get("RECSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _redis_up() -> bool:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
        return True
    except Exception:
        return False


REDIS_UP = _redis_up()
# CI must never silently skip the real-Redis tests: .ci/run starts a server and sets RECSVC_REQUIRE_REDIS=1.
if not REDIS_UP and os.environ.get("RECSVC_REQUIRE_REDIS") == "1":
    raise RuntimeError(f"RECSVC_REQUIRE_REDIS=1 but no Redis answers at {REDIS_URL}")


@pytest.fixture
def redis_url() -> str:
    if not REDIS_UP:
        pytest.skip(f"no Redis at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted after the test."""
    prefix = f"test:{uuid.uuid4().hex[:12]}"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(key)
    r.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
