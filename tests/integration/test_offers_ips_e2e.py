"""Off-policy evaluation end to end on a real Redis: the live policy (Thompson exploration, posteriors learning from
the outcomes it causes) serves simulated customers whose acceptance per offer is known; decisions and outcome events
go through the offline log to Parquet; `recsvc offers evaluate` then estimates other policies, and the estimates
must recover their true values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.offer_store import offer_store_for
from features.offline_log import drain
from features.redis_store import RedisFeatureStore
from features.schema import Event
from recsvc.cli import main as cli_main
from recsvc.ips import evaluate, greedy_choice, load_logged
from recsvc.models import ModelRegistry
from recsvc.offer_policy import OfferPolicy
from recsvc.offer_service import OfferService
from tests.offers_support import offer

TRUE = {"a": 0.25, "b": 0.10, "c": 0.04}
N = 1500


async def test_ips_recovers_known_acceptance_from_the_logs(redis_url: str, redis_prefix: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=5)
    try:
        await offer_store_for(store).upsert_offers([offer(o, value=1.0) for o in TRUE])
        policy = OfferPolicy(exploration=0.3, draws=200, prior_strength=100, refresh_s=0.0, caps=(), seed=11)
        svc = OfferService(store, ModelRegistry(None, {}), policy)
        rng = np.random.default_rng(7)
        shown: dict[str, int] = {}
        for n in range(N):
            cid = f"sim{n:05d}"
            ans = await svc.decide(cid, "web", 1)
            top = ans.offers[0]
            shown[top.offer_id] = shown.get(top.offer_id, 0) + 1
            events = [Event(type="offer_impression", channel="web", customer_id=cid, offer_id=top.offer_id,
                            decision_id=ans.decision_id, event_id=f"imp-{n}")]
            if rng.random() < TRUE[top.offer_id]:
                events.append(Event(type="offer_accept", channel="web", customer_id=cid, offer_id=top.offer_id,
                                    decision_id=ans.decision_id, event_id=f"acc-{n}"))
            await store.ingest(events)
            await svc.record_outcomes(events)  # what POST /v1/events does after ingesting
        assert len(shown) == 3 and shown["a"] > N / 2  # it learned, and kept exploring
        await drain(store, tmp_path)
    finally:
        await store.close()

    logged, skipped = load_logged(tmp_path)
    assert len(logged) == N and skipped == 0
    uniform_true = float(np.mean(list(TRUE.values())))
    greedy_true = float(np.mean([TRUE[greedy_choice(d.candidates)] for d in logged]))
    on_policy = float(np.mean([d.reward for d in logged]))
    # greedy: a target close to the logging policy, so a tight estimate; uniform: far from it (the logging policy
    # learned to show c rarely), so a wide one, and its interval says so
    for name, truth, tolerance in (("greedy", greedy_true, 0.03), ("uniform", uniform_true, 0.05)):
        e = evaluate(logged, name, bootstrap=500, seed=1)
        assert abs(e.ips - truth) < tolerance, (name, e.ips, truth)
        assert abs(e.snips - truth) < tolerance, (name, e.snips, truth)
        assert e.ips_low <= truth <= e.ips_high, (name, e)
    assert greedy_true > on_policy > uniform_true  # exploring costs a little; showing at random costs a lot
    assert evaluate(logged, "logging", bootstrap=0).ips == pytest.approx(on_policy)
    # the same through the command line, as JSON
    assert cli_main(["offers", "evaluate", "--data-dir", str(tmp_path), "--policy", "uniform", "--json",
                     "--bootstrap", "200"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["policy"] == "uniform" and out["decisions"] == N and abs(out["ips"] - uniform_true) < 0.04
