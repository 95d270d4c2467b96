"""Offer propensity: the generic encoder, numpy trees == sklearn, and a planted survey the model and the replay find."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

import features.propensity_model as pm
from features.bundle import load_bundle, save_bundle
from features.propensity_model import FeatureSpec, PropensityModel, TreeEnsemble
from training.config import TrainConfig
from training.propensity import (
    FREQ, INCOME, OFFER_TYPE, VISITS, CompiledTrees, export_trees, fit_trees, holdout_mask, random_replay, replay_acceptance,
    survey_rows, survey_spec, train_propensity,
)

TYPES = list(VISITS.values())


def planted_survey(n: int, seed: int = 0) -> pd.DataFrame:
    """Coupon-survey rows where a coupon is accepted (90%) iff the driver visits that kind of place 1-3 times a
    month or more, else rarely (10%); every other column is noise. Coupons are shown at random, as in the survey."""
    rng = np.random.default_rng(seed)
    pick = lambda values: rng.choice(np.asarray(values, dtype=object), n)  # noqa: E731
    df = pd.DataFrame({
        "destination": pick(["Home", "Work", "No Urgent Place"]), "passanger": pick(["Alone", "Kid(s)"]),
        "weather": pick(["Sunny", "Rainy"]), "temperature": pick([30, 55, 80]), "time": pick(["7AM", "2PM", "10PM"]),
        "coupon": pick(TYPES), "expiration": pick(["2h", "1d"]), "gender": pick(["Female", "Male"]),
        "age": pick(["below21", "26", "50plus"]), "maritalStatus": pick(["Single", "Married partner"]),
        "has_children": pick([0, 1]), "education": pick(["Bachelors degree"]), "occupation": pick(["Student", "Sales"]),
        "income": pick(INCOME), **{col: pick(FREQ) for col in VISITS}, "toCoupon_GEQ15min": pick([0, 1]),
        "toCoupon_GEQ25min": 0, "direction_same": pick([0, 1]),
    })
    col_of = {offer: col for col, offer in VISITS.items()}
    freq = np.array([FREQ.index(df.at[i, col_of[c]]) for i, c in enumerate(df["coupon"])])
    df["Y"] = (rng.random(n) < np.where(freq >= 2, 0.9, 0.1)).astype(int)
    df.loc[rng.random(n) < 0.02, "Bar"] = np.nan  # the survey has gaps
    return df


def test_feature_spec_encoding_and_errors() -> None:
    spec = FeatureSpec({"offer.type": ["bar", "coffee"]}, {"customer.visits.bar": FREQ, "customer.visits.coffee": FREQ},
                       ["context.temperature"], {"cross.visits": ("offer.type", "customer.visits.")})
    assert spec.columns == ["offer.type=bar", "offer.type=coffee", "customer.visits.bar", "customer.visits.coffee",
                            "context.temperature", "cross.visits"]
    x = spec.encode([
        {"offer.type": "coffee", "customer.visits.coffee": "gt8", "customer.visits.bar": "never", "context.temperature": "55"},
        {"offer.type": "spa", "customer.visits.bar": "often"},  # unknown offer type and frequency: missing
    ])
    assert x[0].tolist() == [0, 1, 0, 4, 55, 4]
    assert x[1, :2].tolist() == [0, 0] and np.isnan(x[1, 2:]).all()
    with pytest.raises(ValueError, match=r"rows\[0\]\.context\.temperature"):
        spec.encode([{"context.temperature": "warm"}])
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        spec.encode(["not a dict"])  # type: ignore[list-item]
    assert FeatureSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="numeric"):
        FeatureSpec.from_json({"categorical": {}, "ordinal": {}})
    with pytest.raises(ValueError, match="crosses.c"):
        FeatureSpec({}, {}, [], {"c": ("offer.type", "nothing.")})


def test_numpy_trees_equal_sklearn_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 6))
    x[rng.random(x.shape) < 0.08] = np.nan
    x[:, 5] = np.where(rng.random(900) < 0.5, np.nan, 1.0)  # a column that is mostly missing
    y = ((np.nan_to_num(x[:, 0]) * np.nan_to_num(x[:, 1]) + np.isnan(x[:, 5]) - 0.5 + 0.3 * rng.normal(size=900)) > 0)
    clf = HistGradientBoostingClassifier(max_iter=40, max_depth=6, random_state=0).fit(x, y.astype(int))
    trees = export_trees(clf)
    monkeypatch.setattr(pm, "ROW_CHUNK", 128)  # several chunks, the last one partial
    assert np.abs(trees.predict_proba(x) - clf.predict_proba(x)[:, 1]).max() < 1e-6
    again = TreeEnsemble.from_arrays(trees.arrays())
    assert np.abs(again.raw(x[:5]) - clf.decision_function(x[:5])).max() < 1e-6
    with pytest.raises(ValueError, match="x: expected a 2-d array"):
        trees.raw(x[:, :2])
    with pytest.raises(ValueError, match="trees.value"):
        TreeEnsemble(np.array([-1]), np.zeros(1), np.array([False]), np.zeros(1), np.zeros(1), np.zeros(2), np.array([0]), 0.0)
    with pytest.raises(ValueError, match="binary"):
        export_trees(HistGradientBoostingClassifier(max_iter=3).fit(x, rng.integers(0, 3, 900)))


def test_survey_mapping_onto_the_generic_spec() -> None:
    df = planted_survey(20)
    rows, y = survey_rows(df)
    r0 = rows[0]
    assert r0[OFFER_TYPE] == df.at[0, "coupon"]
    assert r0["offer.expiration_hours"] == {"2h": 2.0, "1d": 24.0}[df.at[0, "expiration"]]
    assert r0["context.hour"] == {"7AM": 7.0, "2PM": 14.0, "10PM": 22.0}[df.at[0, "time"]]
    assert r0["context.minutes_away"] in (5.0, 15.0) and r0["customer.visits.Coffee House"] == df.at[0, "CoffeeHouse"]
    assert y.tolist() == df["Y"].tolist()
    with pytest.raises(ValueError, match="missing column.*coupon"):
        survey_rows(df.drop(columns=["coupon"]))
    with pytest.raises(ValueError, match="'time'"):
        survey_rows(df.assign(time="noonish"))
    with pytest.raises(ValueError, match="'Y'"):
        survey_rows(df.assign(Y=2))


def test_planted_preference_is_learned_and_replayed() -> None:
    rows, y = survey_rows(planted_survey(3000))
    spec = survey_spec(rows)
    x = spec.encode(rows)
    hold = holdout_mask(len(rows), seed=7)
    assert hold.sum() == 750 and holdout_mask(len(rows), seed=7).tolist() == hold.tolist()
    clf, trees = fit_trees(x[~hold], y[~hold], dict(max_iter=40, learning_rate=0.1, random_state=0))
    prob = trees.predict_proba(x[hold])
    assert np.abs(prob - clf.predict_proba(x[hold])[:, 1]).max() < 1e-6
    assert roc_auc_score(y[hold], prob) > 0.85  # the planted rule caps it near 0.9
    hold_rows = [r for r, h in zip(rows, hold) if h]
    acceptance, matched = replay_acceptance(trees, spec, hold_rows, y[hold])
    assert matched > 100 and acceptance > y[hold].mean() + 0.2  # offering what they visit beats random
    # the job scores the same trees with scikit-learn's predictor: the same AUC and the same replay
    compiled = CompiledTrees(clf)
    assert roc_auc_score(y[hold], compiled.predict_proba(x[hold])) == roc_auc_score(y[hold], prob)
    assert replay_acceptance(compiled, spec, hold_rows, y[hold]) == (acceptance, matched)
    assert np.abs(compiled.raw(x[hold]) - trees.raw(x[hold])).max() < 1e-9
    assert compiled.raw(x[:0]).shape == trees.raw(x[:0]).shape == (0,) and compiled.predict_proba(x[:0]).shape == (0,)
    # the policy offers a type the customer visits often whenever there is one
    customer = {f"customer.visits.{t}": "never" for t in TYPES}
    customer |= {"customer.visits.Bar": "gt8", "offer.expiration_hours": 24.0}
    model = PropensityModel(spec, trees, [OFFER_TYPE])
    scores = model.score_offers(customer, [{OFFER_TYPE: t} for t in TYPES])
    assert TYPES[int(np.argmax(scores))] == "Bar"


def test_random_replay_weighs_offer_types_equally() -> None:
    # Bar shown 4 times (1 accepted), Coffee House once (accepted): uniform random = (1/4 + 1) / 2, base rate 2/5
    rows = [{OFFER_TYPE: "Bar"}] * 4 + [{OFFER_TYPE: "Coffee House"}]
    y = np.array([1, 0, 0, 0, 1])
    assert random_replay(rows, y) == pytest.approx(0.625) and y.mean() == pytest.approx(0.4)
    assert np.isnan(random_replay([], np.zeros(0)))


def test_train_propensity_logs_registers_and_loads(tmp_path: Path) -> None:
    data = tmp_path / "survey.csv"
    planted_survey(1600, seed=3).to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrainConfig(tracking_uri=uri, quick=True, progress=False, propensity={"data": str(data)})
    result = train_propensity(cfg)
    assert result.metrics["roc_auc"] > 0.8 and result.metrics["holdout_rows"] == 400
    assert result.promotion is not None and result.promotion.alias == "champion"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(result.run_id)
    assert run.data.metrics["replay_acceptance"] == pytest.approx(result.metrics["replay_acceptance"])
    assert run.data.metrics["replay_random"] == pytest.approx(result.metrics["replay_random"])
    assert result.metrics["replay_acceptance"] > result.metrics["replay_random"] > 0  # the policy beats random
    assert len(run.data.tags["data_fingerprint"]) == 64
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/calibration.png"}
    path = Path(client.download_artifacts(result.run_id, "bundle", str(tmp_path / "dl")))
    arrays, meta = load_bundle(path)
    model = PropensityModel.from_bundle(arrays, meta)
    rows, y = survey_rows(pd.read_csv(data))
    assert roc_auc_score(y, model.predict_proba(rows)) > 0.8
    save_bundle(tmp_path / "copy", arrays, {**meta, "spec": {"categorical": {}}})
    with pytest.raises(ValueError, match="spec: missing"):
        PropensityModel.from_bundle(*load_bundle(tmp_path / "copy"))
    with pytest.raises(ValueError, match="propensity.maxiter: unknown"):
        train_propensity(TrainConfig(tracking_uri=uri, progress=False, propensity={"maxiter": 3}))
    with pytest.raises(ValueError, match="propensity.data"):
        train_propensity(TrainConfig(tracking_uri=uri, progress=False, propensity={"data": str(tmp_path / "none.csv")}))
