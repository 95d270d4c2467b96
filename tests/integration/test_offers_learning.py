"""Learning from outcomes end to end, on a real Redis and a temporary MLflow: a shop whose customers' acceptance of
each offer depends on an attribute the priors cannot see (their `plan`). The live service serves decisions from the
priors and posteriors, the outcomes are posted and drained, `recsvc train propensity --source log` fits a model on the
logged inputs and beats a survey champion judged on the same hold-out, and the reloaded service then scores the known
offers with the model (a new offer stays on the prior) and picks better offers than the priors did."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mlflow
import msgspec
import numpy as np
import pytest
from mlflow import MlflowClient

from features.bundle import save_bundle
from features.offer_store import offer_store_for, publish_and_index
from features.offers import Offer
from features.offline_log import drain, read_decisions
from features.propensity_model import PropensityModel
from features.redis_store import RedisFeatureStore
from features.schema import Event
from recsvc.models import PROPENSITY, ChampionSource, ModelRegistry
from recsvc.offer_policy import OfferPolicy
from recsvc.offer_service import OfferService
from tests.offers_support import tiny_model
from training.cli import main as train_main
from training.promote import register_and_promote
from training.tracking import configure, log_bundle, training_run

# P(accept) by offer and plan: "a" suits families, "b" singles, "c" nobody in particular
TRUE = {("a", "family"): 0.45, ("a", "single"): 0.05, ("b", "family"): 0.05, ("b", "single"): 0.40,
        ("c", "family"): 0.15, ("c", "single"): 0.15}
# Decisions logged before training. Concurrent decisions draw their Thompson samples in an order that varies from run to
# run, so the logged data does too: at 1,200 the learned policy was the best one in about three runs of four, at 2,400
# in every one of eight.
N = 2400
CHUNK = 40
START = 1_790_000_000.0


def offer(offer_id: str, **kw: object) -> Offer:
    return msgspec.convert({"offer_id": offer_id, "name": f"offer {offer_id}", "value": 1.0,
                            "channels": {"web": {"headline": offer_id}}, "attributes": {"kind": "voucher"},
                            "categories": ["home"], **kw}, Offer)


def plan_of(n: int) -> str:
    return "family" if n % 2 else "single"


def survey_champion(uri: str, tmp: Path) -> str:
    """A champion trained elsewhere (the coupon survey's kind of model), with a high roc_auc on its own data."""
    configure(uri)
    model = tiny_model()
    bundle = tmp / "survey-bundle"
    save_bundle(bundle, model.trees.arrays(), {"family": PROPENSITY, "spec": model.spec.to_json(),
                                               "offer_keys": model.offer_keys})
    with training_run(PROPENSITY, {"data": "in_vehicle_coupon.csv.gz"}, "survey",
                      {"source": "file:in_vehicle_coupon.csv.gz"}) as run:
        mlflow.log_metric("roc_auc", 0.95)
        log_bundle(bundle)
    promo = register_and_promote(PROPENSITY, run.info.run_id, "bundle", {"roc_auc": 0.95})
    assert promo.alias == "champion"
    return promo.version


async def serve(svc: OfferService, store: RedisFeatureStore, clock: list[float], rng: np.random.Generator,
                first: int, count: int) -> None:
    """Decide for customers first..first+count-1 (a chunk at a time, concurrently), then post each shown offer's
    impression and, with the true probability, its accept."""
    for lo in range(first, first + count, CHUNK):
        ids = [f"u{n:05d}" for n in range(lo, min(lo + CHUNK, first + count))]
        answers = await asyncio.gather(*[svc.decide(cid, "web", 1) for cid in ids])
        events = []
        for cid, ans in zip(ids, answers):
            top = ans.offers[0].offer_id
            events.append(Event(type="offer_impression", channel="web", customer_id=cid, offer_id=top,
                                decision_id=ans.decision_id, event_id=f"i-{cid}"))
            if rng.random() < TRUE[(top, plan_of(int(cid[1:])))]:
                events.append(Event(type="offer_accept", channel="web", customer_id=cid, offer_id=top,
                                    decision_id=ans.decision_id, event_id=f"a-{cid}"))
        await store.ingest(events)
        await svc.record_outcomes(events)
        clock[0] += 900.0  # a quarter of an hour between chunks: the decisions span 15 hours


async def test_the_service_learns_a_model_from_its_own_outcomes(redis_url: str, redis_prefix: str,
                                                                tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    survey_version = survey_champion(uri, tmp_path)
    source = ChampionSource(uri, cache_dir=tmp_path / "cache")
    builders = {PROPENSITY: PropensityModel.from_bundle}
    registry = ModelRegistry(source, builders)
    assert (await registry.refresh()).loaded == {PROPENSITY: survey_version}

    clock = [START]
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=5, clock=lambda: clock[0])
    data = tmp_path / "data"
    try:
        people = {f"u{n:05d}": {"plan": plan_of(n), "segment": "loyal" if n % 3 else "new"} for n in range(N + 400)}
        await publish_and_index(store, people)
        await offer_store_for(store).upsert_offers([offer("a"), offer("b"), offer("c")])
        policy = OfferPolicy(exploration=0.4, refresh_s=0.0, caps=(), seed=3)
        live = OfferService(store, registry, policy)
        await serve(live, store, clock, np.random.default_rng(5), 0, N)

        # the survey champion knows coupon types, not these offers: every decision ran on the priors
        await drain(store, data)
        logged = read_decisions(data)
        assert logged.num_rows == N and set(logged["model"].to_pylist()) == {None}
        ctx = msgspec.json.decode(logged["context"][0].as_py())
        assert ctx["attributes"]["customer.plan"] in ("family", "single")  # what serving saw is in the log
        assert msgspec.json.decode(logged["entries"][0].as_py())[0]["attrs"] == {"offer.category.home": 1,
                                                                                 "offer.kind": "voucher"}

        assert train_main(["propensity", "--source", "log", "--data-dir", str(data), "--tracking-uri", uri,
                           "--no-progress", "--set", "propensity.max_iter=150"]) == 0
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        champion = client.get_model_version_by_alias(PROPENSITY, "champion")
        version = str(champion.version)
        assert version != survey_version
        reason = champion.tags["promotion"]
        assert "measured on this job's hold-out" in reason, reason
        run = client.get_run(champion.run_id)
        m = run.data.metrics
        # judged like with like: the survey champion, as the service used it here (not at all), on this hold-out
        assert m["champion_roc_auc"] == pytest.approx(m["served_roc_auc"]) and m["roc_auc"] > m["champion_roc_auc"]
        assert m["roc_auc"] < 0.95  # so a gate on the champion's own survey metric would have refused it
        assert m["replay_acceptance"] > m["served_replay_acceptance"]
        assert m["known_offers"] == 3 and m["model_coverage"] == 1.0

        assert (await registry.refresh()).loaded == {PROPENSITY: version}
        learned = OfferService(store, registry, OfferPolicy(exploration=0.0, refresh_s=0.0, caps=()))
        priors = OfferService(store, ModelRegistry(None, {}), OfferPolicy(exploration=0.0, refresh_s=0.0, caps=()))
        fresh = [(f"u{n:05d}", plan_of(n)) for n in range(N, N + 400)]  # customers the log has never seen
        picked: dict[str, list[float]] = {"model": [], "prior": []}
        for cid, plan in fresh:
            top = (await learned.decide(cid, "web", 1, reserve=False)).offers[0]
            base = (await priors.decide(cid, "web", 1, reserve=False)).offers[0]
            assert top.propensity_source.split("+")[0] == "model" and base.propensity_source.startswith("prior")
            picked["model"].append(TRUE[(top.offer_id, plan)])
            picked["prior"].append(TRUE[(base.offer_id, plan)])
        # on the simulated truth, the model's picks are accepted far more often than the priors'
        means = {k: float(np.mean(v)) for k, v in picked.items()}
        assert means["model"] > means["prior"] + 0.1, means

        await offer_store_for(store).upsert_offers([offer("d")])  # a new offer: no outcomes, unknown to the model
        gap: dict[str, list[float]] = {"family": [], "single": []}  # better offer's estimate minus the worse one's
        for cid, plan in fresh[:100]:
            ans = await learned.decide(cid, "web", 4, reserve=False)
            got = {o.offer_id: o for o in ans.offers}
            assert ans.model == f"{PROPENSITY}@{version}"
            assert {o: got[o].propensity_source.split("+")[0] for o in got} == {
                "a": "model", "b": "model", "c": "model", "d": "prior"}
            assert got["d"].propensity_source == "prior" and "propensity:prior" in got["d"].reasons
            better, worse = ("a", "b") if plan == "family" else ("b", "a")
            gap[plan].append(got[better].prior_propensity - got[worse].prior_propensity)
        # the model's own estimate follows the plan, which the priors never saw: on average over each plan's
        # customers (the true gap is 0.35; in 8 runs the smaller of the two means was 0.14 to 0.54). Not for every
        # customer: the logging policy showed some offers rarely to some segments, and the trees, which also split
        # on the segment, can get such a cell wrong.
        means_gap = {plan: float(np.mean(g)) for plan, g in gap.items()}
        assert min(means_gap.values()) > 0.05, means_gap
    finally:
        await store.close()
