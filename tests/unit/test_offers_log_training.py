"""Training the offer propensity on the offer log (training.offer_log): the join of logged decisions to outcome
events, the feature spec and the offers it knows, the time split, the SNIPS replay on hand-computed cases, and the
promotion gate that compares a log-trained model with a champion trained on other data on the same hold-out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from features.offline_log import write_batch
from features.propensity_model import FeatureSpec, PropensityModel, TreeEnsemble
from features.schema import DecisionRecord, LogRecord
from training.cli import main as train_main
from training.offer_log import LogDecision, OfferLog, load_offer_log, log_spec, replay, served_scores, time_split
from training.promote import HOLDOUT_TAG, register_and_promote
from training.tracking import configure, log_bundle, training_run

FAM = "recsvc-propensity"
T0 = 1_790_000_000.0


def decision(did: str, ts: float, entries: list[dict[str, Any]], attributes: dict[str, Any] | None,
             surface: str = "offers", candidates: tuple[list[str], list[float]] = ([], [])) -> DecisionRecord:
    ctx: dict[str, Any] = {"k": len(entries), "segment": "loyal",
                           "candidates": {"ids": candidates[0], "scores": candidates[1]}}
    if attributes is not None:
        ctx["attributes"] = attributes
    return DecisionRecord(decision_id=did, ts=ts, surface=surface, channel="web", person_id="p", customer_id="p",
                          policy="greedy", entries=json.dumps(entries), context=json.dumps(ctx))


def outcome(eid: str, kind: str, did: str, offer_id: str, ts: float) -> LogRecord:
    return LogRecord(event_id=eid, person_id="p", type=kind, channel="web", ts=ts, customer_id="p", offer_id=offer_id,
                     decision_id=did)


def test_the_log_joins_decisions_to_their_outcomes(tmp_path: Path) -> None:
    entry = {"rank": 0, "score": 0.4, "p": 0.8, "propensity": 0.2, "source": "prior", "value": 2.0, "lever": 1.0}
    records = [
        decision("d1", T0, [{**entry, "id": "x", "attrs": {"offer.kind": "voucher"}},
                            {**entry, "id": "y", "rank": 1, "p": 0.5, "propensity": 0.1}], {"customer.plan": "family"}),
        decision("d2", T0 + 60, [{**entry, "id": "y", "propensity": 0.3}], {"customer.plan": "single"}, "export"),
        decision("d3", T0 + 120, [{**entry, "id": "x"}], None),  # logged before decisions carried their inputs
        decision("d4", T0 + 180, [{**entry, "id": "x"}], {"customer.plan": "x"}, "recommendations"),  # not offers
        decision("d5", T0 + 240, [], {"customer.plan": "single"}),  # nothing offered
    ]
    events = [outcome("e1", "offer_impression", "d1", "x", T0 + 5), outcome("e2", "offer_accept", "d1", "x", T0 + 9),
              outcome("e3", "offer_dismiss", "d2", "y", T0 + 70),  # a dismiss alone is a showing too
              outcome("e4", "offer_accept", "d1", "z", T0 + 9),  # an offer the decision did not make
              outcome("e5", "offer_accept", "d3", "x", T0 + 130), outcome("e6", "purchase", "d1", "x", T0 + 9)]
    write_batch(tmp_path, [(f"1-{i}", r) for i, r in enumerate([*records, *events])])
    log = load_offer_log(tmp_path)
    assert [d.decision_id for d in log.decisions] == ["d1", "d2"]
    assert log.rows == [{"customer.plan": "family", "offer.id": "x", "offer.value": 2.0, "offer.kind": "voucher"},
                        {"customer.plan": "single", "offer.id": "y", "offer.value": 2.0}]
    assert log.y.tolist() == [1, 0] and log.served.tolist() == [0.2, 0.3] and log.decision.tolist() == [0, 1]
    assert log.not_shown == 1 and log.without_inputs == 1  # d1's y was never shown; d3 has no inputs
    assert log.decisions[0].first == "x" and log.decisions[0].p == 0.8 and log.decisions[0].accepted_first
    assert log.offers["x"] == (2.0, 1.0, {"offer.kind": "voucher"})


def test_the_spec_knows_the_offers_with_enough_outcomes() -> None:
    rows, ids = [], []
    for n in range(12):
        oid = "big" if n < 8 else "small"
        rows.append({"offer.id": oid, "offer.value": 1.0, "offer.kind": "voucher" if oid == "big" else None,
                     "customer.churn_risk": f"0.{n}", "customer.plan": "family" if n % 2 else "single",
                     "customer.age": "50plus" if n < 3 else "34", "customer.rare": "once" if n == 3 else "x"})
        ids.append(oid)
    spec, known = log_spec(rows, ids, {"min_offer_outcomes": 5, "min_category_rows": 2, "max_categories": 30})
    assert known == ["big"] and spec.categorical["offer.id"] == ["big"]
    assert spec.categorical["offer.kind"] == ["voucher"]  # every known offer has it
    assert spec.categorical["customer.plan"] == ["family", "single"]
    assert spec.categorical["customer.rare"] == ["x"]  # "once" has fewer than min_category_rows rows
    assert "customer.churn_risk" in spec.numeric and "offer.value" in spec.numeric  # numbers, even as text
    assert spec.categorical["customer.age"] == ["34", "50plus"]  # a band among years: not a number
    model = PropensityModel(spec, TreeEnsemble([-1], [0.0], [False], [0], [0], [0.0], [0], 0.0), ["offer.id"])
    assert model.knows({"offer.id": "big", "offer.kind": "voucher"})
    assert not model.knows({"offer.id": "small", "offer.kind": "voucher"}) and not model.knows({"offer.id": "big"})
    # an offer attribute that a known offer lacks does not join the spec (that offer would never be scored)
    rows[0]["offer.kind"] = None
    spec2, _ = log_spec(rows, ids, {"min_offer_outcomes": 5, "min_category_rows": 2, "max_categories": 30})
    assert "offer.kind" not in spec2.categorical


def bare_log(decisions: list[LogDecision], rows_per_decision: list[int]) -> OfferLog:
    dec = np.repeat(np.arange(len(decisions)), rows_per_decision)
    return OfferLog([{} for _ in dec], np.zeros(len(dec), dtype=np.int64), dec, ["x"] * len(dec),
                    np.zeros(len(dec)), decisions, {"a": (1.0, 1.0, {}), "b": (2.0, 1.0, {})})


def test_time_split_keeps_each_decision_on_one_side() -> None:
    ds = [LogDecision(f"d{i}", T0 + i, "s", {}, None, 0.0, False, []) for i in range(4)]
    assert time_split(bare_log(ds, [1, 1, 1, 1]), 0.25) == 3
    assert time_split(bare_log(ds, [1, 1, 1, 3]), 0.25) == 3  # the last decision alone holds half the rows
    assert time_split(bare_log(ds, [3, 1, 1, 1]), 0.5) == 1
    with pytest.raises(ValueError, match="propensity.holdout"):
        time_split(bare_log(ds, [1, 1, 1, 1]), 1.0)


def test_replay_is_snips_over_the_logged_first_choices() -> None:
    """Candidates a (value 1) and b (value 2): the target offers the higher propensity (greedy score / value):
    a in d1 (0.3 vs 0.2) and d3, b in d2. The logging policy chose a with p 0.5 (accepted), b with p 0.25
    (accepted) and b with p 0.8 (not accepted): weights 2, 4, 0; SNIPS = (2 + 4) / 6 = 1, IPS = 6 / 3 = 2."""
    ds = [LogDecision("d1", T0, "s", {}, "a", 0.5, True, [("a", 0.3), ("b", 0.4)]),
          LogDecision("d2", T0, "s", {}, "b", 0.25, True, [("b", 0.8), ("a", 0.3)]),
          LogDecision("d3", T0, "s", {}, "b", 0.8, False, [("a", 0.5), ("b", 0.6)]),
          LogDecision("d4", T0, "s", {}, None, 0.0, False, [])]  # nothing shown: left out
    r = replay(None, bare_log(ds, [1, 1, 1, 0]), ds)
    assert (r.snips, r.ips, r.matched, r.decisions) == (pytest.approx(1.0), pytest.approx(2.0), 2, 3)
    # the same decisions, the loser's accept removed: SNIPS = 2 / 6
    ds[1].accepted_first = False
    assert replay(None, bare_log(ds, [1, 1, 1, 0]), ds).snips == pytest.approx(1 / 3)


def test_served_scores_use_the_model_only_where_it_knows_the_offer() -> None:
    spec = FeatureSpec(categorical={"offer.id": ["a"]}, ordinal={}, numeric=["customer.age"])
    trees = TreeEnsemble([-1], [0.0], [False], [0], [0], [0.0], [0], 0.0)  # P = 0.5 for every row
    rows = [{"offer.id": "a", "customer.age": "50plus"}, {"offer.id": "b"}]
    scores, knows = served_scores(PropensityModel(spec, trees, ["offer.id"]), rows, np.array([0.1, 0.2]))
    assert scores.tolist() == [0.5, 0.2] and knows.tolist() == [True, False]  # "50plus" is missing, not an error
    assert served_scores(None, rows, np.array([0.1, 0.2]))[0].tolist() == [0.1, 0.2]


def test_train_from_an_empty_log_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["propensity", "--source", "log", "--data-dir", str(tmp_path), "--no-progress",
                       "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert "0 offers shown with logged inputs and outcomes" in err and "propensity.min_rows" in err
    assert train_main(["propensity", "--source", "log", "--data-dir", str(tmp_path), "--no-progress",
                       "--set", "propensity.holdout=lots"]) == 2
    assert "propensity.holdout: expected a number" in capsys.readouterr().err


# ---- the promotion gate ----


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def client(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    monkeypatch.delenv("RECSVC_ARTIFACT_ROOT", raising=False)
    client = configure(f"sqlite:///{store_dir}/mlflow.db")
    yield client
    try:
        client.delete_registered_model(FAM)
    except MlflowException:
        pass


def run_with(tmp_path: Path, value: float, marker: str, holdout: str | None = None) -> str:
    bundle = tmp_path / f"b-{marker}"
    bundle.mkdir()
    (bundle / "meta.json").write_text("{}")
    tags = {HOLDOUT_TAG: holdout} if holdout else {}
    with training_run("propensity", {"marker": marker}, f"fp-{marker}", tags) as run:
        mlflow.log_metric("roc_auc", value)
        log_bundle(bundle)
    return run.info.run_id


def test_a_log_model_is_judged_against_the_champion_measured_on_its_hold_out(client: MlflowClient,
                                                                             tmp_path: Path) -> None:
    survey = register_and_promote(FAM, run_with(tmp_path, 0.95, "survey"), "bundle", {"roc_auc": 0.95}, client=client)
    asked: list[str] = []

    def rejudge(mv: Any) -> float:
        asked.append(str(mv.version))
        return 0.52  # the survey champion, as served, on the log's hold-out

    log_run = run_with(tmp_path, 0.74, "log", holdout="offer_log")
    plain = register_and_promote(FAM, log_run, "bundle", {"roc_auc": 0.74}, client=client)
    assert plain.alias == "challenger" and "not compared" in plain.reason  # 0.74 vs 0.95 on other data: refused
    judged = register_and_promote(FAM, log_run, "bundle", {"roc_auc": 0.74}, client=client, rejudge=rejudge)
    assert asked == [survey.version]
    assert judged.alias == "champion" and judged.champion_value == pytest.approx(0.52)
    assert "measured on this job's hold-out" in judged.reason
    # a survey retrain is not compared with the log champion's metric: it stays challenger unless forced
    again = register_and_promote(FAM, run_with(tmp_path, 0.96, "survey2"), "bundle", {"roc_auc": 0.96}, client=client)
    assert again.alias == "challenger" and "was judged on offer_log" in again.reason
    forced = register_and_promote(FAM, run_with(tmp_path, 0.96, "survey3"), "bundle", {"roc_auc": 0.96},
                                  client=client, force=True)
    assert forced.alias == "champion" and forced.forced
    # a champion the job cannot measure: not compared
    blind = register_and_promote(FAM, log_run, "bundle", {"roc_auc": 0.99}, client=client, rejudge=lambda mv: None)
    assert blind.alias == "challenger" and "cannot be measured" in blind.reason
