"""Personalized content through the API, against a real Redis store and the embedded store: upsert and read back,
schedule on the store's clock, segment targeting, freshness after events change category affinity, another instance
seeing an upsert, bad input naming the field, the decision record, and degraded answers when Redis is unreachable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import msgspec
import pytest
import redis as syncredis
from litestar.testing import TestClient

from features.keys import Keys
from features.memory_store import MemoryFeatureStore
from features.redis_store import RedisFeatureStore
from features.schema import DecisionRecord
from features.store import FeatureStore
from recsvc.app import create_app
from recsvc.decisions import is_decision_id
from recsvc.metrics import REGISTRY
from recsvc.models import SEGMENTS, LoadedModel, ModelRegistry
from recsvc.settings import Settings

KEYS = "reader=recs:read,admin=admin"
R = {"Authorization": "Bearer reader"}
A = {"Authorization": "Bearer admin"}
T0 = datetime(2011, 12, 9, 12, 0, tzinfo=timezone.utc).timestamp()  # the demo replays 2011


class SetClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Env:
    kind: str
    clock: SetClock
    make_store: Callable[[], FeatureStore]
    shared: FeatureStore | None = None  # the embedded store is shared by handing the same object to two apps

    def second_store(self) -> FeatureStore:
        return self.shared if self.shared is not None else self.make_store()


@pytest.fixture(params=["memory", "redis"])
def env(request: pytest.FixtureRequest) -> Env:
    clock = SetClock(T0)
    if request.param == "memory":
        return Env("memory", clock, lambda: MemoryFeatureStore(clock=clock))
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return Env("redis", clock, lambda: RedisFeatureStore.from_url(url, prefix=prefix, max_connections=8, timeout_s=2,
                                                                  clock=clock))


@contextmanager
def serve(env: Env, store: FeatureStore | None = None, models: ModelRegistry | None = None,
          **kw: Any) -> Iterator[tuple[TestClient, FeatureStore]]:
    store = store if store is not None else env.make_store()
    if env.kind == "memory" and env.shared is None:
        env.shared = store
    settings = Settings(load_models=False, api_keys=KEYS, log_json=False, **kw)
    with TestClient(create_app(settings, store=store, models=models)) as c:
        try:
            yield c, store
        finally:
            c.blocking_portal.call(store.close)  # in the app's event loop, where its connections live


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def content(cid: str, **kw: Any) -> dict[str, Any]:
    return {"content_id": cid, "kind": "banner", "title": f"Title {cid}", "channels": ["web"], "slots": ["hero"],
            "url": f"https://shop.example/{cid}", **kw}


def ask(c: TestClient, customer: str, channel: str = "web", slot: str = "hero", k: int = 5) -> dict[str, Any]:
    r = c.get(f"/v1/customers/{customer}/content", params={"channel": channel, "slot": slot, "k": k}, headers=R)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def ids(answer: dict[str, Any]) -> list[str]:
    return [e["content_id"] for e in answer["entries"]]


def test_upsert_read_back_and_cold_start_priority_order(env: Env) -> None:
    with serve(env) as (c, _):
        items = [content("low", priority=10, image_url="https://cdn.example/low.png", summary="s", body="b" * 4000,
                         tags=["x"], categories=["Kitchen"]),
                 content("high", priority=90), content("mid", priority=50),
                 content("off", priority=100, available=False), content("mail", kind="email_block", priority=100,
                                                                        channels=["email"], slots=["email_block"])]
        assert c.put("/v1/catalog/content", json={"items": items}, headers=A).json() == {"upserted": 5}
        got = c.get("/v1/catalog/content/low", headers=R).json()
        assert got["body"] == "b" * 4000 and got["categories"] == ["Kitchen"] and got["priority"] == 10
        assert c.get("/v1/catalog/content/nope", headers=R).status_code == 404
        answer = ask(c, "stranger")
        assert {k: answer[k] for k in ("customer_id", "channel", "slot", "model", "model_version", "degraded")} == {
            "customer_id": "stranger", "channel": "web", "slot": "hero", "model": None, "model_version": None,
            "degraded": False}
        assert is_decision_id(answer["decision_id"])
        assert ids(answer) == ["high", "mid", "low"]  # priority order; unavailable and other placements left out
        assert answer["entries"][0] == {"content_id": "high", "kind": "banner", "title": "Title high", "score": 0.18,
                                        "reasons": ["priority"], "url": "https://shop.example/high"}
        assert answer["entries"][2]["image_url"] == "https://cdn.example/low.png"
        assert ids(ask(c, "stranger", k=1)) == ["high"]
        assert ids(ask(c, "stranger", channel="email", slot="email_block")) == ["mail"]
        # an upsert replaces the item whole: "off" comes back
        c.put("/v1/catalog/content", json=[content("off", priority=100)], headers=A)
        assert ids(ask(c, "stranger")) == ["off", "high", "mid", "low"]


def test_schedule_follows_the_store_clock(env: Env) -> None:
    with serve(env) as (c, _):
        c.put("/v1/catalog/content", json=[
            content("now", priority=10, start=iso(T0 - 60), end=iso(T0 + 3600)),
            content("soon", priority=20, start=iso(T0 + 1800)),
            content("gone", priority=30, end=iso(T0)),  # end is exclusive
        ], headers=A)
        assert ids(ask(c, "x")) == ["now"]
        env.clock.t = T0 + 1800  # start is inclusive
        assert ids(ask(c, "x")) == ["soon", "now"]
        env.clock.t = T0 + 7200
        assert ids(ask(c, "x")) == ["soon"]


def test_segment_targeting(env: Env) -> None:
    registry = ModelRegistry(None, {})
    registry.put(LoadedModel(SEGMENTS, "4", None, {}, {}, time.time()))
    with serve(env, models=registry) as (c, store):
        # "at risk" is the name the segments model publishes (with a space); reason codes carry it as one token
        c.put("/v1/catalog/content", json=[content("winback", priority=40, segments=["at risk"]),
                                           content("vip", priority=100, segments=["vip"]),
                                           content("all", priority=60)], headers=A)
        c.blocking_portal.call(store.set_traits, {"c1": {"segment": "at risk"}, "c2": {"segment": "loyal"}})
        a1 = ask(c, "c1")
        # winback: 0.3 + 0.2 * 0.4 = 0.38 beats all: 0.2 * 0.6 = 0.12; vip targets another segment
        assert [(e["content_id"], e["score"], e["reasons"]) for e in a1["entries"]] == [
            ("winback", 0.38, ["segment:at_risk"]), ("all", 0.12, ["priority"])]
        # the champion whose published segment targeted this answer, named like recommendations name theirs
        assert (a1["model"], a1["model_version"]) == ("recsvc-segments", "4") and is_decision_id(a1["decision_id"])
        assert ids(ask(c, "c2")) == ["all"]
        unknown = ask(c, "c3")
        assert ids(unknown) == ["all"] and (unknown["model"], unknown["model_version"]) == (None, None)


def test_answers_follow_events_that_change_category_affinity(env: Env) -> None:
    with serve(env) as (c, _):
        c.put("/v1/catalog/items", json=[{"item_id": "mug", "categories": ["Kitchen"]},
                                         {"item_id": "tent", "categories": ["Garden"]}], headers=A)
        c.put("/v1/catalog/content", json=[content("cook", priority=10, categories=["Kitchen"]),
                                           content("grow", priority=20, categories=["Garden"])], headers=A)
        assert ids(ask(c, "c9")) == ["grow", "cook"]  # nothing known yet: priority
        r = c.post("/v1/events", json={"type": "purchase", "channel": "web", "customer_id": "c9", "item_id": "mug"},
                   headers=A)
        assert r.status_code == 202
        answer = ask(c, "c9")
        # cook: 0.5 * 1 + 0.2 * 0.1 = 0.52; grow: 0.2 * 0.2 = 0.04
        assert [(e["content_id"], e["score"], e["reasons"]) for e in answer["entries"]] == [
            ("cook", 0.52, ["category:Kitchen"]), ("grow", 0.04, ["priority"])]
        c.post("/v1/events", json=[{"type": "purchase", "channel": "web", "customer_id": "c9", "item_id": "tent"}] * 1
               + [{"type": "add_to_cart", "channel": "web", "customer_id": "c9", "item_id": "tent"}], headers=A)
        # Garden 5 + 3 = 8 now tops Kitchen 5: grow 0.5 + 0.04 = 0.54; cook 0.5 * 5/8 + 0.02 = 0.3325
        assert [(e["content_id"], e["score"]) for e in ask(c, "c9")["entries"]] == [("grow", 0.54), ("cook", 0.3325)]


def test_another_instance_sees_an_upsert_after_its_refresh(env: Env) -> None:
    with (serve(env, content_refresh_s=0.05) as (a, _),
          serve(env, store=env.second_store(), content_refresh_s=0.05) as (b, _)):
        assert ids(ask(b, "x")) == []  # b has loaded the (empty) catalog
        a.put("/v1/catalog/content", json=[content("new", priority=5)], headers=A)
        assert ids(ask(a, "x")) == ["new"]  # the writer's own process: at once
        deadline = time.monotonic() + 5
        while ids(ask(b, "x")) != ["new"]:  # the other: after a version check in the background
            assert time.monotonic() < deadline, "the other instance never saw the upsert"
            time.sleep(0.02)


def test_bad_input_names_the_field(env: Env) -> None:
    with serve(env) as (c, _):
        for query, field in [("channel=tv&slot=hero", "channel"), ("channel=web&slot=moon", "slot"),
                             ("channel=web&slot=hero&k=0", "k"), ("channel=web&slot=hero&k=21", "k"),
                             ("channel=web&slot=hero&k=two", "k"), ("slot=hero", "channel"), ("channel=web", "slot")]:
            r = c.get(f"/v1/customers/c1/content?{query}", headers=R)
            assert (r.status_code, r.json()["field"]) == (400, field), (query, r.text)
        assert c.get("/v1/customers/a%20b/content?channel=web&slot=hero", headers=R).json()["field"] == "customer_id"
        for body, field in [([content("a", slots=["moon"])], "$[0].slots"),
                            ({"items": [content("a"), content("b", colour="red")]}, "$.items[1].colour"),
                            ([content("a", start=iso(T0), end=iso(T0 - 1))], "$[0].end"),
                            ([content("a", priority=-1)], "$[0].priority"),
                            ([content("a", channels=["web", "tv"])], "$[0].channels[1]"),
                            ([content("a")] * 1001, "$.items")]:
            r = c.put("/v1/catalog/content", json=body, headers=A)
            assert (r.status_code, r.json()["field"]) == (422, field), r.text
        assert c.put("/v1/catalog/content", content=b"[{", headers=A).status_code == 400
        assert c.put("/v1/catalog/content", json=[content("a")], headers=R).status_code == 403
        assert c.get("/v1/customers/c1/content?channel=web&slot=hero").status_code == 401
        assert ids(ask(c, "c1")) == []  # nothing of the rejected batches was stored


def test_each_answer_is_a_decision_record(env: Env) -> None:
    with serve(env) as (c, store):
        c.put("/v1/catalog/content", json=[content("a", priority=70), content("b", priority=30)], headers=A)
        answer = ask(c, "c5", k=2)
        records: list[DecisionRecord] = []
        deadline = time.monotonic() + 5
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
            entries = c.blocking_portal.call(store.log_read, "test-decisions", "t", 1000)
            records = [rec for _, rec in entries if isinstance(rec, DecisionRecord)]
    assert len(records) == 1
    rec = records[0]
    assert (rec.decision_id, rec.surface, rec.channel, rec.customer_id, rec.person_id, rec.policy, rec.degraded,
            rec.model) == (answer["decision_id"], "content", "web", "c5", "c5", "rules", False, None)
    assert [e["id"] for e in msgspec.json.decode(rec.entries)] == ["a", "b"]
    assert msgspec.json.decode(rec.context or "{}") == {"slot": "hero", "k": 2}
    assert rec.ts == T0


def degraded_count() -> float:
    return REGISTRY.get_sample_value("recsvc_degraded_total", {"surface": "content"}) or 0.0


class Proxy:
    """A TCP relay to Redis that the test can cut: open connections drop and new ones are refused."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.is_cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # cut
                return
            if self.is_cut:
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.is_cut = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_degraded_answer_from_the_cached_catalog_when_redis_becomes_unreachable(redis_url: str,
                                                                                 redis_prefix: str) -> None:
    url = urlparse(redis_url)
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 6379)
    store = RedisFeatureStore.from_url(f"redis://127.0.0.1:{proxy.port}{url.path}", prefix=redis_prefix,
                                       max_connections=4, timeout_s=0.2)
    env = Env("redis", SetClock(T0), lambda: store)
    try:
        with serve(env, store=store) as (c, _):
            c.put("/v1/catalog/items", json=[{"item_id": "mug", "categories": ["Kitchen"]}], headers=A)
            c.put("/v1/catalog/content", json=[content("cook", priority=10, categories=["Kitchen"]),
                                               content("grow", priority=20)], headers=A)
            c.post("/v1/events", json={"type": "purchase", "channel": "web", "customer_id": "c1", "item_id": "mug"},
                   headers=A)
            assert ids(ask(c, "c1")) == ["cook", "grow"]
            before = degraded_count()
            proxy.cut()  # Redis is gone: open connections drop, new ones are refused
            answer = ask(c, "c1")
            assert answer["degraded"] is True
            assert [(e["content_id"], e["reasons"]) for e in answer["entries"]] == [("grow", ["priority"]),
                                                                                    ("cook", ["priority"])]
            assert degraded_count() == before + 1
            assert c.get("/v1/catalog/content/cook", headers=R).status_code == 503  # a plain read: 503, never a 500
    finally:
        proxy.cut()
    sync = syncredis.Redis.from_url(redis_url)
    try:
        assert sync.scard(f"{Keys(redis_prefix).prefix}:ct:index") == 2  # what was written stays
    finally:
        sync.close()


def test_degraded_answer_without_any_catalog_is_empty_not_an_error() -> None:
    dead = RedisFeatureStore.from_url("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.2)
    with TestClient(create_app(Settings(load_models=False, api_keys=KEYS, log_json=False), store=dead)) as c:
        answer = ask(c, "c1")
        assert (answer["degraded"], answer["entries"]) == (True, [])
        assert c.put("/v1/catalog/content", json=[content("a")], headers=A).status_code == 503
