"""The service against a real Redis (lifespan-owned store, unique prefix): an accepted event is visible to the next
request, catalog and erasure go through Redis, a rejected batch leaves no key, and a dead Redis gives 503."""

from __future__ import annotations

import redis
from litestar.testing import TestClient

from features.keys import Keys
from features.redis_store import RedisFeatureStore
from recsvc.app import create_app
from recsvc.settings import Settings

KEYS = "w=events:write,r=recs:read,a=admin"
W = {"Authorization": "Bearer w"}
R = {"Authorization": "Bearer r"}
A = {"Authorization": "Bearer a"}


def settings_for(redis_url: str, prefix: str) -> Settings:
    return Settings(load_models=False, redis_url=redis_url, redis_prefix=prefix, api_keys=KEYS, log_json=False, redis_timeout_s=2)


def test_event_then_profile_through_redis(redis_url: str, redis_prefix: str) -> None:
    with TestClient(create_app(settings_for(redis_url, redis_prefix))) as c:  # the lifespan opens the Redis store
        ready = c.get("/ready").json()
        assert (ready["status"], ready["store"], ready["store_ok"], ready["missing"]) == ("ready", "redis", True, [])
        body = [{"type": "view", "channel": "app", "anonymous_id": "ck-1", "item_id": "X", "event_id": "a1"},
                {"type": "add_to_cart", "channel": "app", "customer_id": "c7", "anonymous_id": "ck-1", "item_id": "X"}]
        r = c.post("/v1/events", json=body, headers=W)
        assert r.status_code == 202 and r.json()["accepted"] == 2
        p = c.get("/v1/customers/ck-1/profile", headers=R).json()
        assert p["customer_id"] == "c7" and p["cart"] == {"X": 1} and p["linked_ids"] == ["anonymous:ck-1"]
        assert p["counts"]["type:view"] == 1 and p["counts"]["channel:app"] == 2
        again = c.post("/v1/events", json=body[:1], headers=W).json()
        assert again == {"accepted": 0, "duplicates": 1, "duplicate_ids": ["a1"]}


def test_catalog_unicode_and_erase_through_redis(redis_url: str, redis_prefix: str) -> None:
    with TestClient(create_app(settings_for(redis_url, redis_prefix))) as c:
        item = {"item_id": "灯-1", "title": "心形挂灯 🕯️", "categories": ["家居"], "price": 2.55}
        assert c.put("/v1/catalog/items", json={"items": [item]}, headers=A).json() == {"upserted": 1}
        got = c.get("/v1/catalog/items/灯-1", headers=R).json()
        assert {k: got[k] for k in item} == item
        c.post("/v1/events", json={"type": "purchase", "channel": "web", "customer_id": "顾客", "email_hash": "h1",
                                   "item_id": "灯-1", "value": 2.55}, headers=W)
        assert c.get("/v1/customers/h1/profile", headers=R).json()["purchased"].keys() == {"灯-1"}
        assert c.delete("/v1/customers/顾客", headers=A).json() == {"customer_id": "顾客", "erased": True}
        assert c.get("/v1/customers/顾客/profile", headers=R).status_code == 404
        assert c.get("/v1/customers/h1/profile", headers=R).status_code == 404
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.sismember(Keys(redis_prefix).erased, "顾客")
    finally:
        r.close()


def test_rejected_batch_writes_no_key(redis_url: str, redis_prefix: str) -> None:
    with TestClient(create_app(settings_for(redis_url, redis_prefix))) as c:
        body = [{"type": "view", "channel": "web", "customer_id": f"c{n}", "item_id": "X"} for n in range(50)]
        body.append({"type": "view", "channel": "web", "customer_id": "c50", "item_id": "X",
                     "timestamp": "2999-01-01T00:00:00Z"})
        r = c.post("/v1/events", json=body, headers=W)
        assert r.status_code == 422 and r.json()["field"] == "$[50].timestamp"
    r = redis.Redis.from_url(redis_url)
    try:
        # only the request's rate-limit counter (P:rl:...), no data
        assert [k for k in r.scan_iter(match=f"{redis_prefix}:*", count=1000) if b":rl:" not in k] == []
    finally:
        r.close()


def test_person_ids_are_unambiguous_through_redis(redis_url: str, redis_prefix: str) -> None:
    """A customer_id that is an anonymous person's id is refused; a visitor whose anonymous id equals a customer id is
    read as `anonymous:<id>`, the customer by the bare id."""
    with TestClient(create_app(settings_for(redis_url, redis_prefix))) as c:
        r = c.post("/v1/events", json={"type": "view", "channel": "web", "customer_id": "anonymous:v1", "item_id": "X"},
                   headers=W)
        assert r.status_code == 422 and r.json()["field"] == "$.customer_id", r.text
        body = [{"type": "purchase", "channel": "web", "customer_id": "12345", "item_id": "BOUGHT"},
                {"type": "view", "channel": "web", "anonymous_id": "12345", "item_id": "LOOKED"}]
        assert c.post("/v1/events", json=body, headers=W).json()["accepted"] == 2
        customer = c.get("/v1/customers/12345/profile", headers=R).json()
        visitor = c.get("/v1/customers/anonymous:12345/profile", headers=R).json()
        assert customer["customer_id"] == "12345" and list(customer["purchased"]) == ["BOUGHT"]
        assert visitor["customer_id"] == "anonymous:12345" and [e["item_id"] for e in visitor["recent"]] == ["LOOKED"]
        assert c.get("/v1/customers/device:12345/profile", headers=R).status_code == 404
    r = redis.Redis.from_url(redis_url)
    try:
        assert not r.exists(Keys(redis_prefix).person("anonymous:v1", "p"))  # the refused event wrote nothing
    finally:
        r.close()


def test_unreachable_redis_gives_503_and_accepts_nothing() -> None:
    dead = RedisFeatureStore.from_url("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.2)
    with TestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=dead)) as c:
        r = c.post("/v1/events", json={"type": "view", "channel": "web", "customer_id": "c", "item_id": "i"},
                   headers=W)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == "store_unavailable"
        assert c.get("/v1/customers/c/profile", headers=R).status_code == 503
        assert c.get("/ready").status_code == 503
        assert c.get("/health").status_code == 200
