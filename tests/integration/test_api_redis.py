"""The service against a real Redis: an accepted event is visible to the next request; a dead Redis gives 503."""

from __future__ import annotations

from litestar.testing import TestClient

from features.redis_store import RedisFeatureStore
from recsvc.app import create_app
from recsvc.settings import Settings

KEYS = "w=events:write,r=recs:read"


def test_event_then_profile_through_redis(redis_url: str, redis_prefix: str) -> None:
    settings = Settings(redis_url=redis_url, redis_prefix=redis_prefix, api_keys=KEYS, log_json=False, redis_timeout_s=2)
    with TestClient(create_app(settings)) as c:  # the lifespan opens and closes the Redis store
        assert c.get("/ready").json() == {"status": "ready", "store": "redis"}
        body = [{"type": "view", "channel": "app", "anonymous_id": "ck-1", "item_id": "X", "event_id": "a1"},
                {"type": "add_to_cart", "channel": "app", "customer_id": "c7", "anonymous_id": "ck-1", "item_id": "X"}]
        r = c.post("/v1/events", json=body, headers={"Authorization": "Bearer w"})
        assert r.status_code == 202 and r.json()["accepted"] == 2
        p = c.get("/v1/customers/ck-1/profile", headers={"Authorization": "Bearer r"}).json()
        assert p["customer_id"] == "c7" and p["cart"] == {"X": 1} and p["linked_ids"] == ["anonymous:ck-1"]
        again = c.post("/v1/events", json=body[:1], headers={"Authorization": "Bearer w"}).json()
        assert again == {"accepted": 0, "duplicates": 1, "duplicate_ids": ["a1"]}


def test_unreachable_redis_gives_503_and_accepts_nothing() -> None:
    dead = RedisFeatureStore.from_url("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.2)
    with TestClient(create_app(Settings(api_keys=KEYS, log_json=False), store=dead)) as c:
        r = c.post("/v1/events", json={"type": "view", "channel": "web", "customer_id": "c", "item_id": "i"},
                   headers={"Authorization": "Bearer w"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == "store_unavailable"
        assert c.get("/ready").status_code == 503
        assert c.get("/health").status_code == 200
