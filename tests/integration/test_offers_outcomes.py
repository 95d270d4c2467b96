"""Outcome events against a real Redis: counted in the segment the decision was made for (two segments stay apart,
in the counts and in the next decisions), and counted once even when the client retries after a failure anywhere in
the outcome step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from features.offer_store import offer_store_for, publish_and_index
from features.offers import Offer
from features.redis_store import RedisFeatureStore
from features.schema import Event
from features.store import StoreUnavailable
from recsvc.app import create_app
from recsvc.models import ModelRegistry
from recsvc.offer_policy import OfferPolicy
from recsvc.offer_service import OfferService
from recsvc.settings import Settings

KEYS = "w=events:write,o=offers:read,a=admin"
W = {"Authorization": "Bearer w"}
O = {"Authorization": "Bearer o"}
A = {"Authorization": "Bearer a"}
SEP = "\x1f"


def posterior(redis_url: str, prefix: str, offer_id: str) -> dict[str, int]:
    r = redis.Redis.from_url(redis_url)
    try:
        return {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}:o:{{{offer_id}}}:post").items()}
    finally:
        r.close()


async def test_outcomes_land_in_the_segment_of_their_decision(redis_url: str, redis_prefix: str,
                                                              tmp_path: Path) -> None:
    cfg = tmp_path / "offers.toml"
    cfg.write_text("[policy]\nexploration = 0.0\nrefresh_seconds = 0\n[caps]\ntotal = { max = 50, days = 1 }\n",
                   encoding="utf-8")
    settings = Settings(load_models=False, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=KEYS,
                        log_json=False, redis_timeout_s=2, offers_config=cfg)
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    try:
        await publish_and_index(store, {"l1": {"segment": "loyal"}, "l2": {"segment": "loyal"},
                                        "r1": {"segment": "at risk"}, "r2": {"segment": "at risk"}})
        async with AsyncTestClient(create_app(settings)) as c:
            deal = {"offer_id": "deal", "name": "A deal", "channels": {"web": {"headline": "deal"}}, "value": 2.0}
            assert (await c.put("/v1/catalog/offers", json=[deal], headers=A)).status_code == 200
            loyal = (await c.get("/v1/customers/l1/offers?channel=web", headers=O)).json()
            risky = (await c.get("/v1/customers/r1/offers?channel=web", headers=O)).json()
            assert loyal["offers"][0]["offer_id"] == risky["offers"][0]["offer_id"] == "deal"
            # l1 moves to "at risk" after the decision: its outcomes still belong to the decision's segment
            await publish_and_index(store, {"l1": {"segment": "at risk"}})

            def ev(kind: str, cid: str, ans: dict[str, Any] | None, eid: str) -> dict[str, Any]:
                e = {"type": kind, "channel": "web", "customer_id": cid, "offer_id": "deal", "event_id": eid}
                return {**e, "decision_id": ans["decision_id"]} if ans is not None else e

            events = [ev("offer_impression", "l1", loyal, "i-l1"), ev("offer_accept", "l1", loyal, "a-l1"),
                      ev("offer_impression", "r1", risky, "i-r1"), ev("offer_dismiss", "r1", risky, "d-r1")]
            assert (await c.post("/v1/events", json=events, headers=W)).status_code == 202
            assert posterior(redis_url, redis_prefix, "deal") == {
                f"loyal{SEP}i": 1, f"loyal{SEP}a": 1, f"at risk{SEP}i": 1, f"at risk{SEP}d": 1}
            # the next decisions see their own segment's outcomes only
            l2 = (await c.get("/v1/customers/l2/offers?channel=web", headers=O)).json()["offers"][0]
            r2 = (await c.get("/v1/customers/r2/offers?channel=web", headers=O)).json()["offers"][0]
            assert l2["outcomes"] == {"impressions": 1, "accepts": 1} and "outcomes:1/1" in l2["reasons"]
            assert r2["outcomes"] == {"impressions": 1, "accepts": 0} and "outcomes:0/1" in r2["reasons"]
            assert l2["propensity_source"] == r2["propensity_source"] == "prior+posterior"
            assert l2["propensity"] > l2["prior_propensity"] and r2["propensity"] < r2["prior_propensity"]
            # without a decision_id, an event counts in the customer's current segment (l1 is "at risk" now)
            assert (await c.post("/v1/events", json=ev("offer_impression", "l1", None, "i-l1-b"),
                                 headers=W)).status_code == 202
            assert posterior(redis_url, redis_prefix, "deal")[f"at risk{SEP}i"] == 2
    finally:
        await store.close()


class _FlakyPipeline:
    """A pipeline whose execute() fails with a connection error, before sending or after (the reply lost)."""

    def __init__(self, pipe: Any, when: str) -> None:
        self._pipe = pipe
        self._when = when

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self._when == "after":
            await self._pipe.execute(*args, **kwargs)
        raise redis.ConnectionError(f"injected: connection lost {self._when} the pipeline")


class Flaky:
    """Make the nth pipeline the client hands out fail (nth counted from install); `hit` says whether it came."""

    def __init__(self, client: aioredis.Redis, nth: int, when: str) -> None:
        self.client, self.nth, self.when = client, nth, when
        self.real = client.pipeline
        self.handed = 0

    @property
    def hit(self) -> bool:
        return self.handed >= self.nth

    def __enter__(self) -> "Flaky":
        def pipeline(*args: Any, **kwargs: Any) -> Any:
            self.handed += 1
            pipe = self.real(*args, **kwargs)
            return _FlakyPipeline(pipe, self.when) if self.handed == self.nth else pipe

        self.client.pipeline = pipeline  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.pipeline = self.real  # type: ignore[method-assign]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_retry_after_a_failed_outcome_step_counts_once(redis_url: str, redis_prefix: str, when: str) -> None:
    """Whichever round trip of the outcome step fails (each in turn), and whether the failure hit before Redis
    applied it or only lost the reply, the client's retry of the same events leaves each counted exactly once."""
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    try:
        await offer_store_for(store).upsert_offers([msgspec.convert(
            {"offer_id": "deal", "name": "A deal", "channels": {"web": {"headline": "deal"}}}, Offer)])
        svc = OfferService(store, ModelRegistry(None, {}), OfferPolicy(exploration=0.0, refresh_s=0.0, caps=()))
        nth = 0
        while True:
            nth += 1
            cid = f"c{nth}"
            await publish_and_index(store, {cid: {"segment": f"s{nth}"}})
            ans = await svc.decide(cid, "web")
            events = [Event(type=kind, channel="web", customer_id=cid, offer_id="deal", decision_id=ans.decision_id,
                            event_id=f"{kind}-{nth}") for kind in ("offer_impression", "offer_accept")]
            await store.ingest(events)
            with Flaky(store.client, nth, when) as fault:
                try:
                    await svc.record_outcomes(events)
                except StoreUnavailable:
                    pass  # the client sees an error and retries
            await svc.record_outcomes(events)  # the retry
            await svc.record_outcomes(events)  # and a late duplicate delivery
            counts = posterior(redis_url, redis_prefix, "deal")
            assert {k: v for k, v in counts.items() if k.startswith(f"s{nth}{SEP}")} == {
                f"s{nth}{SEP}i": 1, f"s{nth}{SEP}a": 1}, (nth, counts)
            assert b"a:deal" in await store.client.hgetall(f"{redis_prefix}:c:{{{cid}}}:os")  # suppressed
            again = await svc.decide(cid, "web")
            assert again.offers == [] and again.reasons == ["no_eligible_offer"]
            if not fault.hit:  # every round trip of the outcome step has failed once
                break
        assert nth >= 2
    finally:
        await store.close()
