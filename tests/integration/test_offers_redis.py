"""The offer engine against a real Redis (unique key prefix per test): the same decisions as the in-process store,
caps that hold under 50 concurrent requests (service and HTTP), cross-channel suppression, cool-down and consent,
outcome counts once per event, one log record per reservation, the export equal to the live decision and
resumable without charging anyone twice, and a degraded answer when Redis is gone."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
import uvicorn
from litestar.testing import AsyncTestClient

from features.memory_store import MemoryFeatureStore
from features.offer_store import ReadSpec, offer_store_for, publish_and_index
from features.offers import Offer
from features.offline_log import drain, read_decisions
from features.redis_store import RedisFeatureStore
from features.schema import Event, EventContext, Item, decode_decision_record
from recsvc.app import create_app
from recsvc.models import ModelRegistry
from recsvc.offer_policy import Cap, OfferPolicy
from recsvc.offer_service import ExportRequest, OfferService
from recsvc.settings import Settings

DAY = 86400.0
POLICY = OfferPolicy(exploration=0.0, refresh_s=0.0, caps=(Cap("total", 3, DAY), Cap("email", 1, 7 * DAY)))
KEYS = "w=events:write,o=offers:read,a=admin"
W = {"Authorization": "Bearer w"}
O = {"Authorization": "Bearer o"}
A = {"Authorization": "Bearer a"}


def offer(offer_id: str, **kw: Any) -> Offer:
    doc = {"offer_id": offer_id, "name": f"offer {offer_id}",
           "channels": {"web": {"headline": offer_id}, "email": {"subject": offer_id}, "app": {"headline": offer_id}},
           **kw}
    return msgspec.convert(doc, Offer)


CATALOG = [
    offer("mugs", items=["MUG"], categories=["kitchen"], value=6.0),
    offer("lamps", items=["LAMP"], value=9.0, eligibility={"countries": ["UK"]}),
    offer("winback", value=12.0, eligibility={"segments": ["at risk"], "churn_risk": {"min": 0.5}}),
    offer("vip", value=20.0, lever=2.0, eligibility={"segments": ["champions"], "cltv_90d": {"min": 500}}),
    offer("refill", items=["REFILL"], value=4.0, eligibility={"owns_any": ["MUG"], "owns_none": ["REFILL"]}),
    offer("ship", value=2.0, limit={"count": 1, "days": 30}, cooldown_days=5),
    offer("fr", value=30.0, eligibility={"exclude_countries": ["UK"]}),
]
PEOPLE = {
    "c1": {"segment": "champions", "churn_risk": "0.1", "cltv_90d": "900", "consent_email": "granted"},
    "c2": {"segment": "at risk", "churn_risk": "0.7", "cltv_90d": "40", "consent_email": "granted"},
    "c3": {"segment": "lost", "churn_risk": "0.9", "cltv_90d": "5"},
    "c4": {"segment": "at risk", "churn_risk": "0.3", "consent_email": "granted"},
}


async def seed(store: Any, now: float) -> None:
    await store.upsert_items([Item(item_id="MUG", categories=["kitchen"]), Item(item_id="LAMP", categories=["home"]),
                              Item(item_id="REFILL", categories=["kitchen"])])
    events = []
    for n, (person, item, kind, country) in enumerate([("c1", "MUG", "purchase", "UK"), ("c1", "LAMP", "view", "UK"),
                                                        ("c2", "LAMP", "add_to_cart", "FR"), ("c3", "MUG", "view", "UK"),
                                                        ("c4", "REFILL", "purchase", "UK"), ("c4", "MUG", "purchase", "UK")]):
        events.append(Event(type=kind, channel="web", customer_id=person, item_id=item, event_id=f"seed-{n}",
                            context=EventContext(country=country)))
    await store.ingest(events, now=now - 3600)
    await publish_and_index(store, PEOPLE)
    await offer_store_for(store).upsert_offers(CATALOG)


@pytest.fixture
async def rstore(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisFeatureStore]:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    yield store
    await store.close()


def service(store: Any, policy: OfferPolicy = POLICY) -> OfferService:
    return OfferService(store, ModelRegistry(None, {}), policy)


def summary(ans: Any) -> list[tuple[str, Any, str]]:
    # affinities decay with the clock between the two reads: scores agree to a relative 1e-6
    return [(o.offer_id, pytest.approx(o.score, rel=1e-6), o.propensity_source) for o in ans.offers]


async def test_redis_and_in_process_stores_decide_the_same(rstore: RedisFeatureStore) -> None:
    now = rstore.clock()
    mem = MemoryFeatureStore()
    await seed(rstore, now)
    await seed(mem, now)
    r, m = service(rstore), service(mem)
    for cid, channel in [("c1", "web"), ("c2", "web"), ("c3", "web"), ("c4", "app"), ("c1", "email"), ("c3", "email"),
                         ("nobody", "web"), ("c1", "web")]:
        a = await r.decide(cid, channel, 3, explain=True)
        b = await m.decide(cid, channel, 3, explain=True)
        assert summary(a) == summary(b), (cid, channel)
        assert sorted((x.offer_id, x.rule) for x in a.excluded) == sorted((x.offer_id, x.rule) for x in b.excluded)
        assert a.reasons == b.reasons and [c.used for c in a.caps] == [c.used for c in b.caps]
    rules = {(x.offer_id, x.rule) for x in (await r.decide("c2", "web", 5, explain=True, reserve=False)).excluded}
    assert {("vip", "segment"), ("lamps", "country"), ("refill", "owns_any")} <= rules
    c4 = await r.decide("c4", "web", 5, explain=True, reserve=False)
    assert ("winback", "churn_risk") in {(x.offer_id, x.rule) for x in c4.excluded}
    assert ("refill", "owns_none") in {(x.offer_id, x.rule) for x in c4.excluded}


async def test_arbitration_order_against_redis(rstore: RedisFeatureStore) -> None:
    await seed(rstore, rstore.clock())
    a = await service(rstore, replace(POLICY, caps=())).decide("c1", "web", 5, reserve=False)
    # vip: 20 x lever 2 at the champions prior beats everything; mugs (bought) beats lamps (viewed) on affinity
    assert [o.offer_id for o in a.offers][:1] == ["vip"]
    scores = [o.score for o in a.offers]
    assert scores == sorted(scores, reverse=True)
    for o in a.offers:
        assert o.score == pytest.approx(o.propensity * o.value * o.lever)
    by = {o.offer_id: o for o in a.offers}
    assert by["mugs"].propensity > by["lamps"].propensity > by["ship"].propensity  # purchase > view > nothing
    assert "affinity:item:MUG" in by["mugs"].reasons


async def test_50_concurrent_requests_never_exceed_a_cap(rstore: RedisFeatureStore, redis_url: str,
                                                         redis_prefix: str) -> None:
    await seed(rstore, rstore.clock())
    svc = service(rstore, replace(POLICY, max_retries=10))
    answers = await asyncio.gather(*[svc.decide("c1", "web" if n % 2 else "email", 3) for n in range(50)])
    served = [o.offer_id for a in answers for o in a.offers]
    assert len(served) == 3  # 3 a day in all channels together
    email = [a for a in answers if a.channel == "email" and a.offers]
    assert sum(len(a.offers) for a in email) <= 1  # 1 email offer a week
    r = redis.Redis.from_url(redis_url)
    try:
        ledger = r.zrange(f"{redis_prefix}:c:{{c1}}:ol", 0, -1)
        assert len(ledger) == 3
        # every answer was logged exactly once, and the log holds exactly the reserved offers
        recs = [decode_decision_record(f[b"d"]) for _, f in r.xrange(f"{redis_prefix}:log") if f[b"k"] == b"d"]
        assert sorted(x.decision_id for x in recs) == sorted(a.decision_id for a in answers)
        assert sorted(e["id"] for x in recs for e in json.loads(x.entries)) == sorted(served)
    finally:
        r.close()


def test_50_concurrent_http_requests_never_exceed_a_cap(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    """A real server (uvicorn in a thread) and 50 connections at once: the requests interleave inside the service
    (read ledger, decide, reserve), and the reservation script still lets only the cap through."""
    cfg = tmp_path / "offers.toml"
    cfg.write_text("[policy]\nexploration = 0.2\nmax_retries = 10\n[caps]\ntotal = { max = 2, days = 1 }\n",
                   encoding="utf-8")
    settings = Settings(load_models=False, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=KEYS,
                        log_json=False, redis_timeout_s=2, offers_config=cfg)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

        r = httpx.put(f"http://127.0.0.1:{port}/v1/catalog/offers", json=[msgspec.to_builtins(o) for o in CATALOG],
                      headers=A)
        assert r.status_code == 200

        async def run() -> list[tuple[int, dict]]:
            # 50 connections open first, then every request written before any answer is read: they all reach
            # the service together and interleave there (read the ledger, decide, reserve)
            conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
            req = (b"GET /v1/customers/c9/offers?channel=web&k=3 HTTP/1.1\r\nHost: t\r\n"
                   b"Authorization: Bearer o\r\n\r\n")
            for _, writer in conns:
                writer.write(req)
            await asyncio.gather(*[w.drain() for _, w in conns])
            out = []
            for reader, writer in conns:
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                out.append((status, json.loads(await reader.readexactly(length))))
                writer.close()
            return out

        got = asyncio.run(run())
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert {status for status, _ in got} == {200}
    served = [o["offer_id"] for _, body in got for o in body["offers"]]
    assert len(served) == 2
    assert sum(1 for _, body in got if body["reasons"] == ["cap:total"]) >= 40
    assert len({body["decision_id"] for _, body in got}) == 50


async def test_suppression_cooldown_consent_and_outcomes_through_http(redis_url: str, redis_prefix: str,
                                                                       tmp_path: Path) -> None:
    cfg = tmp_path / "offers.toml"
    cfg.write_text("[policy]\nexploration = 0.0\nrefresh_seconds = 0\n[caps]\ntotal = { max = 50, days = 1 }\n",
                   encoding="utf-8")
    settings = Settings(load_models=False, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=KEYS,
                        log_json=False, redis_timeout_s=2, offers_config=cfg)
    async with AsyncTestClient(create_app(settings)) as c:
        await c.put("/v1/catalog/offers", json=[msgspec.to_builtins(o) for o in CATALOG], headers=A)
        assert (await c.get("/v1/customers/c5/offers?channel=email", headers=O)).json()["reasons"] == ["consent:email"]
        assert (await c.put("/v1/customers/c5/consent", json={"email": True}, headers=W)).status_code == 200
        first = (await c.get("/v1/customers/c5/offers?channel=email", headers=O)).json()
        top = first["offers"][0]["offer_id"]
        assert top == "fr"  # no country known: the excluded-countries offer applies, and is worth the most
        accept = {"type": "offer_accept", "channel": "email", "customer_id": "c5", "offer_id": top,
                  "decision_id": first["decision_id"], "event_id": "acc-c5"}
        for _ in range(3):  # a retried delivery of the same event
            assert (await c.post("/v1/events", json=accept, headers=W)).status_code == 202
        web = (await c.get("/v1/customers/c5/offers?channel=web&k=5&explain=true", headers=O)).json()
        assert top not in [o["offer_id"] for o in web["offers"]]
        assert (top, "accepted") in {(x["offer_id"], x["rule"]) for x in web["excluded"]}
        app = (await c.get("/v1/customers/c5/offers?channel=app&k=5", headers=O)).json()
        assert top not in [o["offer_id"] for o in app["offers"]]
        shown = web["offers"][0]["offer_id"]
        await c.post("/v1/events", json=[
            {"type": "offer_impression", "channel": "web", "customer_id": "c5", "offer_id": shown,
             "decision_id": web["decision_id"], "event_id": "imp-c5"},
            {"type": "offer_dismiss", "channel": "web", "customer_id": "c5", "offer_id": shown,
             "decision_id": web["decision_id"], "event_id": "dis-c5"}], headers=W)
        later = (await c.get("/v1/customers/c5/offers?channel=web&k=5&explain=true", headers=O)).json()
        assert (shown, "cooldown") in {(x["offer_id"], x["rule"]) for x in later["excluded"]}
    r = redis.Redis.from_url(redis_url)
    try:
        post = {k.decode(): int(v) for k, v in r.hgetall(f"{redis_prefix}:o:{{{top}}}:post").items()}
        assert post == {"unknown\x1fi": 1, "unknown\x1fa": 1}  # three deliveries, counted once
        post2 = {k.decode(): int(v) for k, v in r.hgetall(f"{redis_prefix}:o:{{{shown}}}:post").items()}
        assert post2 == {"unknown\x1fi": 1, "unknown\x1fd": 1}  # the impression and the dismiss: one trial
        assert r.zrange(f"{redis_prefix}:o:consent:{{email}}", 0, -1) == [b"c5"]
    finally:
        r.close()


async def collect(svc: OfferService, req: ExportRequest, stop_after_chunks: int | None = None) -> list[dict]:
    cursor = svc.start_export(req)
    lines: list[dict] = []
    gen = svc.export(req, cursor)
    chunks = 0
    async for chunk in gen:
        lines += [json.loads(x) for x in chunk.splitlines()]
        chunks += 1
        if stop_after_chunks is not None and chunks >= stop_after_chunks:
            await gen.aclose()  # the client went away
            break
    return lines


async def test_export_equals_the_live_decision(redis_url: str, redis_prefix: str) -> None:
    a = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    b = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix + ":twin", timeout_s=2)
    try:
        now = a.clock()
        await seed(a, now)
        await seed(b, now)
        policy = replace(POLICY, export_batch=2)
        exported = await collect(service(a, policy), ExportRequest(channel="email", all_consented=True, k=3))
        body = [x for x in exported if "offers" in x]
        assert [x["customer_id"] for x in body] == ["c1", "c2", "c4"]  # consented, in id order; c3 never agreed
        assert exported[-1]["done"] is True and exported[-1]["customers"] == 3
        live = service(b, policy)
        for x in body:
            ans = await live.decide(x["customer_id"], "email", 3)
            assert [(o["offer_id"], o["score"]) for o in x["offers"]] == \
                [(o.offer_id, pytest.approx(o.score, rel=1e-6)) for o in ans.offers]
            assert x["reasons"] == ans.reasons and x["model"] == ans.model
        seg = await collect(service(a, policy), ExportRequest(channel="web", segment="at risk", k=2))
        assert [x["customer_id"] for x in seg if "offers" in x] == ["c2", "c4"]
        none = await collect(service(a, policy), ExportRequest(channel="email", segment="nobody-here"))
        assert none == []
    finally:
        await a.close()
        await b.close()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{redis_prefix}:twin:*", count=1000):
            r.delete(key)
        r.close()


async def test_interrupted_export_resumes_without_charging_anyone_twice(rstore: RedisFeatureStore, redis_url: str,
                                                                        redis_prefix: str) -> None:
    people = {f"p{n:03d}": {"segment": "lost", "consent_email": "granted"} for n in range(40)}
    await publish_and_index(rstore, people)
    await offer_store_for(rstore).upsert_offers([offer("a", value=3.0), offer("b")])
    svc = service(rstore, replace(POLICY, export_batch=5))
    req = ExportRequest(channel="email", all_consented=True, k=1)
    first = await collect(svc, req, stop_after_chunks=2)  # 10 customers delivered, more may have been reserved
    assert len(first) == 10
    cut = first[6]  # the client saw up to here (it lost the rest of what it read)
    resumed = await collect(svc, msgspec.structs.replace(req, cursor=cut["cursor"]))
    body = [x for x in resumed if "offers" in x]
    assert [x["customer_id"] for x in first[:7] + body] == sorted(people)  # nobody skipped, nobody twice
    again = {x["customer_id"]: x["decision_id"] for x in body}
    for x in first[7:]:
        assert again[x["customer_id"]] == x["decision_id"]  # the same decision, replayed, not a new one
    r = redis.Redis.from_url(redis_url)
    try:
        for person in people:
            assert r.zcard(f"{redis_prefix}:c:{{{person}}}:ol") == 1, person  # charged exactly once
        recs = [decode_decision_record(f[b"d"]) for _, f in r.xrange(f"{redis_prefix}:log") if f[b"k"] == b"d"]
        assert len(recs) == len(people) and {x.surface for x in recs} == {"export"}
    finally:
        r.close()
    # a new export (no cursor) is a new run: the email cap now holds everyone back
    third = await collect(svc, req)
    assert all(x["reasons"] == ["cap:email"] for x in third if "offers" in x)


async def test_a_reserved_batch_logs_every_decision_once(rstore: RedisFeatureStore, redis_url: str,
                                                        redis_prefix: str, tmp_path: Path) -> None:
    """One reservation call for a batch of 150 (the caps and offer checks it shares sent once): each decision is
    reserved and reaches the offline log once, in the same atomic step as its contacts."""
    people = {f"q{n:03d}": {"segment": "lost", "consent_email": "granted"} for n in range(150)}
    await publish_and_index(rstore, people)
    await offer_store_for(rstore).upsert_offers([offer("a"), offer("b", value=2.0)])
    lines = await collect(service(rstore, replace(POLICY, export_batch=150)),
                          ExportRequest(channel="email", all_consented=True))
    decided = {x["decision_id"] for x in lines if "offers" in x}
    r = redis.Redis.from_url(redis_url)
    try:
        logged = [decode_decision_record(f[b"d"]) for _, f in r.xrange(f"{redis_prefix}:log") if f[b"k"] == b"d"]
        assert sorted(x.decision_id for x in logged) == sorted(decided) and len(decided) == 150
        assert all(r.zcard(f"{redis_prefix}:c:{{{p}}}:ol") == 1 for p in people)
    finally:
        r.close()
    await drain(rstore, tmp_path)
    table = read_decisions(tmp_path)
    assert set(table["decision_id"].to_pylist()) == decided and set(table["surface"].to_pylist()) == {"export"}


async def test_every_reservation_reaches_the_offline_log(rstore: RedisFeatureStore, tmp_path: Path) -> None:
    await seed(rstore, rstore.clock())
    svc = service(rstore, replace(POLICY, exploration=0.3, seed=5))
    answers = [await svc.decide(c, ch, 2) for c in PEOPLE for ch in ("web", "email", "app")]
    await drain(rstore, tmp_path)
    table = read_decisions(tmp_path)
    logged = {d: json.loads(e) for d, e in zip(table["decision_id"].to_pylist(), table["entries"].to_pylist())}
    assert set(logged) == {a.decision_id for a in answers}
    for a in answers:
        assert [e["id"] for e in logged[a.decision_id]] == [o.offer_id for o in a.offers]
        assert [e["p"] for e in logged[a.decision_id]] == pytest.approx([o.p for o in a.offers])
    ctx = json.loads(table["context"].to_pylist()[0])
    assert {"candidates", "k", "segment", "exploration"} <= set(ctx)


async def test_dead_redis_gives_degraded_answers_and_no_offers() -> None:
    dead = RedisFeatureStore.from_url("redis://127.0.0.1:1/0", prefix="x", timeout_s=0.2)
    svc = service(dead)
    a = await svc.decide("c1", "web", 3)
    assert a.degraded is True and a.offers == [] and "did not answer" in (a.degraded_reason or "")
    lines = await collect(svc, ExportRequest(channel="email", all_consented=True))
    assert len(lines) == 1 and lines[0]["error"] == "store_unavailable" and lines[0]["cursor"]
    await dead.close()


async def test_the_read_script_resolves_ids_as_the_store_does(rstore: RedisFeatureStore) -> None:
    """The live read resolves the asked id inside its script (one round trip less); it must agree with
    RedisFeatureStore.resolve for every kind of id."""
    await rstore.ingest([
        Event(type="view", channel="web", anonymous_id="ck-1", item_id="X", event_id="r1"),
        Event(type="view", channel="web", customer_id="c1", anonymous_id="ck-1", device_id="dv-1", item_id="X",
              event_id="r2"),
        Event(type="view", channel="app", device_id="dv-lonely", item_id="X", event_id="r3"),
        Event(type="view", channel="email", customer_id="c2", email_hash="eh-2", item_id="X", event_id="r4"),
    ])
    ids = ["c1", "ck-1", "dv-1", "dv-lonely", "eh-2", "c2", "nobody"]
    batch = await offer_store_for(rstore).read_customers(ids, ReadSpec(), DAY, rstore.clock(), resolve=True)
    expected = [await rstore.resolve(i) for i in ids]
    assert [r.person_id for r in batch.records] == expected
    assert expected[:3] == ["c1", "c1", "c1"] and expected[3] == "device:dv-lonely" and expected[6] == "nobody"
    assert batch.records[1].profile is not None and batch.records[6].profile is None


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_qualified_ids_name_only_their_alias_in_offer_reads(rstore: RedisFeatureStore, backend: str) -> None:
    """As profile and live reads (docs/api.md, Ids): "device:d1" is the person the alias d1 points to now, not an
    older anonymous person named device:d1; "anonymous:12345" is the visitor, bare "12345" the customer; a qualified
    id nobody knows is never a customer. The offer read resolves in its script (offers_read.lua) and must agree."""
    store: Any = rstore if backend == "redis" else MemoryFeatureStore()
    now = store.clock()
    await store.ingest([Event(type="view", channel="web", device_id="d1", item_id="A", event_id="q1")], now=now)
    await store.ingest([Event(type="view", channel="web", anonymous_id="v1", device_id="d1", item_id="B",
                              event_id="q2")], now=now)
    await store.ingest([Event(type="view", channel="web", device_id="d1", item_id="C", event_id="q3"),
                        Event(type="purchase", channel="web", customer_id="12345", item_id="MUG", event_id="q4"),
                        Event(type="view", channel="web", anonymous_id="12345", item_id="LAMP", event_id="q5")],
                       now=now)
    ids = ["device:d1", "d1", "anonymous:v1", "anonymous:12345", "12345", "email:12345", "device:nobody"]
    expected = [await store.resolve(i) for i in ids]
    assert expected[0] == expected[1] == expected[2] == "anonymous:v1"
    assert expected[3:] == ["anonymous:12345", "12345", "email:12345", "device:nobody"]
    batch = await offer_store_for(store).read_customers(ids, ReadSpec(owned=("MUG",)), DAY, now, resolve=True)
    assert [r.person_id for r in batch.records] == expected
    profiles = [await store.profile(i, now=now) for i in ids]
    assert [r.profile.customer_id if r.profile else None for r in batch.records] == \
        [p.customer_id if p else None for p in profiles]
    for rec, prof in zip(batch.records, profiles):  # what decisions read of a profile (the Redis read: a lean one)
        if prof is not None:
            got = rec.profile
            assert got is not None and (got.country, got.orders, got.monetary, got.last_seen, got.traits) == \
                (prof.country, prof.orders, prof.monetary, prof.last_seen, prof.traits)
            assert {k: v for k, v in got.counts.items() if k.startswith("type:")} == \
                {k: v for k, v in prof.counts.items() if k.startswith("type:")}
    assert batch.records[3].owned == {} and set(batch.records[4].owned) == {"MUG"}  # the visitor bought nothing
    svc = service(store, replace(POLICY, caps=()))
    await offer_store_for(store).upsert_offers([offer("any")])
    for any_id, person in zip(ids, expected):
        assert (await svc.decide(any_id, "web", 1, reserve=False)).person_id == person, any_id


async def test_reindex_builds_audiences_from_traits_published_without_them(rstore: RedisFeatureStore, redis_url: str,
                                                                            redis_prefix: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Traits published the old way (features.traits.publish_traits, as training/segments.py does) are not in the
    audience indexes until `recsvc offers index` rebuilds them; a later segment change moves the person."""
    from features.traits import publish_traits
    from recsvc.cli import main as cli_main

    await publish_traits(rstore, {"x1": {"segment": "lost", "consent_email": "granted"}, "x2": {"segment": "lost"},
                                  "x3": {"segment": "new", "consent_sms": "denied"}})
    shop = offer_store_for(rstore)
    assert await shop.audience("segment", "lost", None, 10) == []
    monkeypatch.setenv("RECSVC_REDIS_URL", redis_url)
    monkeypatch.setenv("RECSVC_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("RECSVC_LOG_JSON", "false")
    assert await asyncio.to_thread(cli_main, ["offers", "index"]) == 0
    assert await shop.audience("segment", "lost", None, 10) == ["x1", "x2"]
    assert await shop.audience("segment", "new", None, 10) == ["x3"]
    assert await shop.audience("consent", "email", None, 10) == ["x1"]
    assert await shop.audience("segment", "lost", "x1", 10) == ["x2"]  # the export cursor: after x1
    await publish_and_index(rstore, {"x2": {"segment": "new"}})
    assert await shop.audience("segment", "lost", None, 10) == ["x1"]
    assert await shop.audience("segment", "new", None, 10) == ["x2", "x3"]
