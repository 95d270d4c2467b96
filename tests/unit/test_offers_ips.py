"""Off-policy estimators (recsvc.ips): a hand-computed case, and simulated logs where a known logging policy and a
known acceptance per offer let the IPS / SNIPS estimates of other policies be checked against their true value; erased
people (and every alias linked to them) stay out of the logged decisions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.offline_log import write_batch
from features.schema import DecisionRecord, LinkRecord, LogRecord
from recsvc.ips import LoggedDecision, estimate, evaluate, greedy_choice, load_logged, target_probability

TRUE = {"a": 0.30, "b": 0.12, "c": 0.04}


def test_hand_computed_estimates() -> None:
    logs = [
        LoggedDecision("d1", "a", 0.5, (("a", 3.0), ("b", 1.0)), 1.0, 1.0),
        LoggedDecision("d2", "b", 0.25, (("a", 3.0), ("b", 1.0)), 1.0, 1.0),
        LoggedDecision("d3", "a", 0.5, (("a", 1.0), ("b", 2.0)), 1.0, 0.0),
    ]
    g = evaluate(logs, "greedy", bootstrap=0)
    # greedy agrees with d1 (w = 1/0.5) only: IPS = (2 * 1 + 0 + 0) / 3; SNIPS = 2 / 2
    assert g.ips == pytest.approx(2 / 3) and g.snips == pytest.approx(1.0) and g.matched == 1
    u = evaluate(logs, "uniform", bootstrap=0)
    # weights 0.5/0.5, 0.5/0.25, 0.5/0.5 = 1, 2, 1; rewards 1, 1, 0
    assert u.ips == pytest.approx((1 + 2) / 3) and u.snips == pytest.approx(3 / 4)
    assert u.ess == pytest.approx(16 / 6)
    assert evaluate(logs, "logging", bootstrap=0).ips == pytest.approx(2 / 3)  # on-policy: the plain mean
    assert greedy_choice([("b", 1.0), ("a", 1.0)]) == "a"  # ties go to the smaller offer id, as the live policy
    assert target_probability("uniform", LoggedDecision("x", "z", 0.1, (("a", 1.0),), 1.0, 0.0)) == 0.0
    with pytest.raises(ValueError, match="policy"):
        evaluate(logs, "best")


def simulate(n: int, seed: int) -> tuple[list[LoggedDecision], float, float]:
    """An epsilon-greedy logging policy whose greedy pick follows noisy scores; returns the logs and the true value of
    the greedy and the uniform target policies."""
    rng = np.random.default_rng(seed)
    offers = list(TRUE)
    logs, greedy_truth = [], []
    eps = 0.4
    for i in range(n):
        scores = {o: TRUE[o] + rng.normal(0, 0.08) for o in offers}  # the logging policy's (noisy) beliefs
        best = max(offers, key=lambda o: (scores[o], o))
        probs = {o: (1 - eps) * (o == best) + eps / len(offers) for o in offers}
        action = rng.choice(offers, p=[probs[o] for o in offers])
        reward = float(rng.random() < TRUE[action])
        logs.append(LoggedDecision(f"d{i}", str(action), probs[action], tuple((o, scores[o]) for o in offers), 1.0,
                                   reward))
        greedy_truth.append(TRUE[greedy_choice(list(scores.items()))])
    return logs, float(np.mean(greedy_truth)), float(np.mean(list(TRUE.values())))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ips_recovers_the_true_value_of_other_policies(seed: int) -> None:
    logs, greedy_true, uniform_true = simulate(20_000, seed)
    logged = np.mean([d.reward for d in logs])
    for policy, truth in (("greedy", greedy_true), ("uniform", uniform_true)):
        e = evaluate(logs, policy, bootstrap=300, seed=seed)
        assert abs(e.ips - truth) < 0.015, (policy, e.ips, truth)
        assert abs(e.snips - truth) < 0.015, (policy, e.snips, truth)
        assert e.ips_low <= truth <= e.ips_high or abs(e.ips - truth) < 0.005
        assert e.snips_low < e.snips < e.snips_high
    # the uniform policy is clearly worse than what was logged, and IPS says so
    assert evaluate(logs, "uniform", bootstrap=0).ips < logged - 0.03


def test_confidence_interval_covers_the_truth_at_about_the_stated_rate() -> None:
    covered = 0
    runs = 60
    for seed in range(runs):
        logs, _, uniform_true = simulate(2_000, 100 + seed)
        e = evaluate(logs, "uniform", bootstrap=0)
        covered += e.ips_low <= uniform_true <= e.ips_high
    assert covered / runs > 0.85  # nominal 95%


def test_estimate_of_nothing_is_nan() -> None:
    ips, lo, hi, snips, slo, shi = estimate(np.zeros(0), np.zeros(0))
    assert all(np.isnan(v) for v in (ips, lo, hi, snips, slo, shi))


def test_erased_people_leave_the_evaluation_with_every_alias_ever_linked_to_them(tmp_path: Path) -> None:
    """The offline log drops an erased id's own rows; evaluation also drops decisions and outcomes of the aliases
    linked to them (features.offline_log.erased_closure, as training): here an anonymous visitor decided on before
    logging in as the erased customer, and a device linked to that visitor."""
    t0 = 1_790_000_000.0

    def decided(did: str, person: str, asked: str, ts: float) -> DecisionRecord:
        ctx = {"candidates": {"ids": ["a", "b"], "scores": [0.3, 0.1]}}
        entries = [{"id": "a", "rank": 0, "p": 0.9, "value": 1.0}]
        return DecisionRecord(decision_id=did, ts=ts, surface="offers", channel="web", person_id=person,
                              customer_id=asked, policy="greedy", entries=json.dumps(entries), context=json.dumps(ctx))

    def accepted(eid: str, did: str, ts: float, **who: str) -> LogRecord:
        return LogRecord(event_id=eid, type="offer_accept", channel="web", ts=ts, offer_id="a", decision_id=did, **who)

    records = [
        decided("kept", "c1", "c1", t0),
        decided("visitor", "anonymous:v9", "anonymous:v9", t0 + 1),  # before the visitor logged in as c9
        decided("device", "device:d9", "d9", t0 + 2),  # a device later merged into the visitor
        decided("customer", "c9", "c9", t0 + 3),
        accepted("e1", "kept", t0 + 5, customer_id="c1", person_id="c1"),
        accepted("e2", "visitor", t0 + 6, person_id="anonymous:v9", anonymous_id="v9"),
        LinkRecord(alias="device:d9", person_id="anonymous:v9", ts=t0 + 7),
        LinkRecord(alias="anonymous:v9", person_id="c9", ts=t0 + 8),
    ]
    write_batch(tmp_path, [(f"1-{i}", r) for i, r in enumerate(records)])
    assert {d.decision_id for d in load_logged(tmp_path)[0]} == {"kept", "visitor", "device", "customer"}
    (tmp_path / "erased.txt").write_text("c9\n", encoding="utf-8")
    logged, skipped = load_logged(tmp_path)
    assert [(d.decision_id, d.reward) for d in logged] == [("kept", 1.0)] and skipped == 0
