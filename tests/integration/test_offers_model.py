"""The learned propensity model in offer decisions: a real model trained here on the in-vehicle coupon survey (as
training.propensity does, fewer trees), served through the app on a real Redis. Offers whose type the model was
trained on are scored by it, with the customer's traits and the request's context; a retail offer it never saw is
not, and keeps the affinity prior."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from litestar.testing import AsyncTestClient

from features.propensity_model import PropensityModel
from recsvc.app import create_app
from recsvc.models import PROPENSITY, LoadedModel, ModelRegistry
from recsvc.settings import Settings
from training.propensity import DEFAULT_DATA, OFFER_KEYS, fit_trees, survey_rows, survey_spec

KEYS = "w=events:write,o=offers:read,a=admin"
O = {"Authorization": "Bearer o"}
A = {"Authorization": "Bearer a"}
W = {"Authorization": "Bearer w"}


@pytest.fixture(scope="module")
def coupon_model() -> PropensityModel:
    rows, y = survey_rows(pd.read_csv(DEFAULT_DATA))
    spec = survey_spec(rows)
    _, trees = fit_trees(spec.encode(rows), y, {"max_iter": 40, "learning_rate": 0.1, "max_leaf_nodes": 15,
                                                "random_state": 0, "early_stopping": False})
    return PropensityModel(spec, trees, OFFER_KEYS)


def coupon(offer_id: str, kind: str, hours: float) -> dict:
    return {"offer_id": offer_id, "name": kind, "channels": {"app": {"body": f"{kind} nearby"}}, "value": 1.0,
            "attributes": {"type": kind, "expiration_hours": hours}}


async def test_model_scores_the_offers_it_knows(coupon_model: PropensityModel, redis_url: str, redis_prefix: str,
                                                tmp_path: Path) -> None:
    cfg = tmp_path / "offers.toml"
    cfg.write_text("[policy]\nexploration = 0.0\n[caps]\ntotal = { max = 100, days = 1 }\n", encoding="utf-8")
    registry = ModelRegistry(None, {})
    registry.put(LoadedModel(PROPENSITY, "3", "run-x", coupon_model, {}, time.time()))
    settings = Settings(load_models=False, redis_url=redis_url, redis_prefix=redis_prefix, api_keys=KEYS,
                        log_json=False, redis_timeout_s=2, offers_config=cfg)
    async with AsyncTestClient(create_app(settings, models=registry)) as c:
        catalog = [coupon("coffee", "Coffee House", 24), coupon("bar", "Bar", 2), coupon("cheap", "Restaurant(<20)", 24),
                   coupon("dear", "Restaurant(20-50)", 2),
                   {"offer_id": "lamps", "name": "Lamps -20%", "channels": {"app": {"body": "lamps"}}, "value": 1.0,
                    "items": ["LAMP"], "attributes": {"type": "Home & garden"}}]
        assert (await c.put("/v1/catalog/offers", json=catalog, headers=A)).status_code == 200
        await c.post("/v1/events", json={"type": "view", "channel": "app", "customer_id": "d1", "item_id": "LAMP"},
                     headers=W)
        # traits as a survey would publish them; "age" as a band the model cannot read as a number is dropped
        from features.redis_store import RedisFeatureStore

        store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
        await store.set_traits({"d1": {"gender": "Female", "age": "50plus", "marital_status": "Single",
                                       "visits.Coffee House": "4~8", "visits.Bar": "never", "segment": "loyal"}})
        await store.close()
        ctx = ["weather:Sunny", "destination:No Urgent Place", "companions:Friend(s)", "temperature:80", "hour:14"]
        r = await c.get("/v1/customers/d1/offers", params={"channel": "app", "k": 5, "context": ctx}, headers=O)
        assert r.status_code == 200, r.text
        a = r.json()
    assert a["model"] == "recsvc-propensity@3"
    got = {o["offer_id"]: o for o in a["offers"]}
    assert set(got) == {"coffee", "bar", "cheap", "dear", "lamps"}
    assert got["lamps"]["propensity_source"] == "prior" and "affinity:item:LAMP" in got["lamps"]["reasons"]
    base = {"context.weather": "Sunny", "context.destination": "No Urgent Place", "context.companions": "Friend(s)",
            "context.temperature": 80.0, "context.hour": 14.0, "customer.gender": "Female",
            "customer.marital_status": "Single", "customer.visits.Coffee House": "4~8", "customer.visits.Bar": "never"}
    kinds = {"coffee": ("Coffee House", 24), "bar": ("Bar", 2), "cheap": ("Restaurant(<20)", 24),
             "dear": ("Restaurant(20-50)", 2)}
    direct = coupon_model.score_offers(base, [{"offer.type": t, "offer.expiration_hours": h} for t, h in kinds.values()])
    for (oid, _), p in zip(kinds.items(), direct):
        assert got[oid]["propensity_source"] == "model"
        assert got[oid]["propensity"] == pytest.approx(float(p), rel=1e-9), oid
    model_order = [oid for oid, _ in sorted(zip(kinds, direct), key=lambda kv: -kv[1])]
    assert [o["offer_id"] for o in a["offers"] if o["offer_id"] in kinds] == model_order
    # the survey's signal survives: a frequent coffee-house visitor is likelier to take the coffee coupon than the bar's
    assert got["coffee"]["propensity"] > got["bar"]["propensity"]
