"""Offer propensity learned from this catalog's own outcomes: the offer decisions of the offline log (each carries the
customer and context inputs the service used, and each offer made with its attributes) joined by decision_id to the
offer_impression / offer_accept / offer_dismiss events; one row per offer shown, label 1 when it was accepted.

`recsvc train propensity --source log [--data-dir var/data]`. The same kind of model as training.propensity (gradient-
boosted trees on a generic feature spec, exported as arrays), registered as `recsvc-propensity`, judged on the latest
25% of the decisions (a time-based hold-out):

- roc_auc: of the propensities the service would use with this model, on the hold-out's offers shown: the model's for
  the offers its spec knows (an `offer.id` with at least `min_offer_outcomes` outcomes in its training data), the
  logged one (prior and posterior) for the others. A champion trained on other data (the coupon survey) is measured
  the same way on the same hold-out before the gate compares them (training.promote, `rejudge`).
- replay_acceptance: the acceptance of the policy "offer the candidate with the highest such propensity", estimated
  from the logged choices by self-normalized inverse propensity scoring (SNIPS) with their logged probabilities p
  (the logging policy was not uniform, so the plain mean of matching decisions would be biased).

The bundle records the outcomes it learned from per offer and segment (`seen_outcomes`): the service's posterior over
the model's estimate counts only later ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from mlflow.entities.model_registry import ModelVersion
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from features.bundle import load_bundle, save_bundle
from features.offline_log import read_decisions, read_events
from features.propensity_model import FeatureSpec, PropensityModel, numeric_safe, offer_inputs
from features.schema import OFFER_EVENTS
from training.config import TrainConfig
from training.promote import HOLDOUT_TAG, register_and_promote
from training.propensity import FAMILY, PropensityResult, _params, calibration_figure, fit_trees
from training.tracking import configure, log_bundle, log_figure, training_run

LOG_SOURCE = "log"  # `--source log`
OFFER_SURFACES = ("offers", "export")
HOLDOUT_DATA = "offer_log"  # the HOLDOUT_TAG of these runs: their metrics hold on the offer log's hold-out
# settings of [propensity] this job reads (the rest are the trees' own, shared with training.propensity)
LOG_SETTINGS = {"holdout": 0.25, "min_offer_outcomes": 30, "min_rows": 200, "min_category_rows": 5,
                "max_categories": 30}


@dataclass
class LogDecision:
    """One logged offer decision with the model inputs it was made on."""

    decision_id: str
    ts: float
    segment: str
    base: dict[str, Any]  # customer and context inputs the service used
    first: str | None  # the offer at rank 0
    p: float  # the probability the logging policy put it there
    accepted_first: bool
    candidates: list[tuple[str, float]]  # (offer, greedy score) eligible within the caps, best first


@dataclass
class OfferLog:
    """Rows (one per offer shown) and the decisions they come from, in time order."""

    rows: list[dict[str, Any]]  # model inputs: the decision's base and the offer's inputs
    y: np.ndarray  # 1 = accepted
    decision: np.ndarray  # row -> index into decisions
    offer_ids: list[str]
    served: np.ndarray  # the propensity the service used (logged)
    decisions: list[LogDecision]
    offers: dict[str, tuple[float, float, dict[str, Any]]]  # offer -> (value, lever, own attributes), last logged
    without_inputs: int = 0  # decisions logged before decisions carried their inputs: not usable
    not_shown: int = 0  # offers made without any outcome event (never seen by the customer, as far as we know)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for d, o, y in zip(self.decision.tolist(), self.offer_ids, self.y.tolist()):
            h.update(f"{self.decisions[d].decision_id}\x1f{o}\x1f{y}\n".encode())
        return h.hexdigest()


def load_offer_log(data_dir: Path, start: float | None = None, end: float | None = None) -> OfferLog:
    """Offer decisions of the offline log joined to their outcome events on decision_id (run `recsvc drain` first)."""
    dec = read_decisions(data_dir, start, end)
    if dec.num_rows:
        dec = dec.filter(pc.is_in(dec["surface"], value_set=pa.array(list(OFFER_SURFACES))))
    ev = read_events(data_dir, start, columns=["type", "offer_id", "decision_id"])
    shown: set[tuple[str, str]] = set()
    accepted: set[tuple[str, str]] = set()
    if ev.num_rows:
        ev = ev.filter(pc.is_in(ev["type"], value_set=pa.array(sorted(OFFER_EVENTS))))
        for kind, o, d in zip(ev["type"].to_pylist(), ev["offer_id"].to_pylist(), ev["decision_id"].to_pylist()):
            if d and o:
                shown.add((d, o))
                if kind == "offer_accept":
                    accepted.add((d, o))
    log = OfferLog([], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), [], np.zeros(0), [], {})
    ys: list[int] = []
    dec_of: list[int] = []
    served: list[float] = []
    for did, ts, entries, context in zip(dec["decision_id"].to_pylist(), dec["ts"].to_pylist(),
                                         dec["entries"].to_pylist(), dec["context"].to_pylist()):
        ents = json.loads(entries or "[]")
        if not ents:
            continue  # nothing offered: nothing to learn from
        ctx = json.loads(context or "{}")
        base = ctx.get("attributes")
        if not isinstance(base, dict):
            log.without_inputs += 1
            continue
        first = next((e for e in ents if e.get("rank") == 0), None)
        cands = ctx.get("candidates") or {}
        d = LogDecision(did, float(ts), str(ctx.get("segment") or ""), base,
                        str(first["id"]) if first else None, float(first.get("p") or 0.0) if first else 0.0,
                        first is not None and (did, str(first["id"])) in accepted,
                        [(str(i), float(v)) for i, v in zip(cands.get("ids", []), cands.get("scores", []))])
        index = len(log.decisions)
        log.decisions.append(d)
        for e in ents:
            oid = str(e["id"])
            own = e.get("attrs") or {}
            log.offers[oid] = (float(e.get("value") or 0.0), float(e.get("lever") or 0.0), own)
            if (did, oid) not in shown:
                log.not_shown += 1
                continue
            log.rows.append({**base, **offer_inputs(oid, float(e.get("value") or 0.0), own)})
            log.offer_ids.append(oid)
            ys.append(int((did, oid) in accepted))
            dec_of.append(index)
            served.append(float(e.get("propensity") or 0.0))
    log.y = np.array(ys, dtype=np.int64)
    log.decision = np.array(dec_of, dtype=np.int64)
    log.served = np.array(served, dtype=np.float64)
    return log


def time_split(log: OfferLog, fraction: float) -> int:
    """The index of the first hold-out decision: the latest decisions holding about `fraction` of the rows (decisions
    are in time order; a decision's rows stay on one side)."""
    if not 0 < fraction < 1:
        raise ValueError(f"propensity.holdout: expected a fraction between 0 and 1, got {fraction}")
    per = np.bincount(log.decision, minlength=len(log.decisions))
    from_end = np.cumsum(per[::-1])
    need = fraction * len(log.y)
    k = int(np.searchsorted(from_end, need))  # the last k + 1 decisions hold >= need rows
    return max(1, len(log.decisions) - (k + 1))


def _is_number(v: Any) -> bool:
    if isinstance(v, bool | int | float):
        return math.isfinite(float(v))
    if isinstance(v, str):
        try:
            return math.isfinite(float(v))
        except ValueError:
            return False
    return False


def log_spec(rows: Sequence[Mapping[str, Any]], offer_ids: Sequence[str], settings: Mapping[str, Any],
             ) -> tuple[FeatureSpec, list[str]]:
    """The feature spec for these rows, and the offers it knows. `offer.id` is categorical over the offers with at
    least `min_offer_outcomes` rows (so the service scores exactly those with the model); other attributes are
    numeric when every value is a number, else categorical over values with `min_category_rows` rows (at most
    `max_categories`). An offer attribute given as text joins the spec only when every known offer has it (a known
    offer lacking it would not be scored)."""
    counts = Counter(offer_ids)
    known = sorted(o for o, n in counts.items() if n >= int(settings["min_offer_outcomes"]))
    known_set = set(known)
    values: dict[str, list[Any]] = {}
    on_known: Counter[str] = Counter()
    for row, oid in zip(rows, offer_ids):
        for k, v in row.items():
            if v is None or k == "offer.id":
                continue
            values.setdefault(k, []).append(v)
            if oid in known_set and k.startswith("offer."):
                on_known[k] += 1
    known_rows = sum(counts[o] for o in known)
    categorical: dict[str, list[str]] = {"offer.id": known} if known else {}
    numeric: list[str] = []
    for k in sorted(values):
        vs = values[k]
        if all(_is_number(v) for v in vs):
            numeric.append(k)
            continue
        if k.startswith("offer."):
            if on_known[k] == known_rows:
                categorical[k] = sorted({str(v) for v in vs})
            continue
        freq = Counter(str(v) for v in vs)
        keep = sorted(v for v, n in freq.most_common(int(settings["max_categories"]))
                      if n >= int(settings["min_category_rows"]))
        if keep:
            categorical[k] = keep
    return FeatureSpec(categorical=categorical, ordinal={}, numeric=numeric), known


def served_scores(model: PropensityModel | None, rows: Sequence[Mapping[str, Any]], served: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """What the service would use: the model's propensity for the rows whose offer it knows, the logged propensity
    for the others; and which rows the model scored."""
    scores = np.asarray(served, dtype=np.float64).copy()
    if model is None or not len(rows):
        return scores, np.zeros(len(rows), dtype=bool)
    knows = np.array([model.knows(r) for r in rows], dtype=bool)
    if knows.any():
        picked = [numeric_safe(model.spec, dict(r)) for r, k in zip(rows, knows) if k]
        scores[knows] = model.predict_proba(picked)
    return scores, knows


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if len(set(y.tolist())) == 2 else float("nan")


@dataclass
class Replay:
    snips: float
    ips: float
    matched: int
    decisions: int
    ess: float


def replay(model: PropensityModel | None, log: OfferLog, decisions: Sequence[LogDecision]) -> Replay:
    """Acceptance of "offer the candidate with the highest propensity" (the model's where it knows the offer, else
    the one the service used: the logged greedy score over value x lever), by SNIPS over the logged first choices."""
    usable = [d for d in decisions if d.first is not None and d.p > 0 and d.candidates]
    rows: list[dict[str, Any]] = []
    where: list[tuple[int, int]] = []
    est: list[list[float]] = []
    for i, d in enumerate(usable):
        ps = []
        for j, (oid, score) in enumerate(d.candidates):
            value, lever, own = log.offers.get(oid, (1.0, 1.0, {}))
            w = value * lever
            ps.append(score / w if w > 0 else score)
            if model is not None and oid in log.offers:
                row = {**d.base, **offer_inputs(oid, value, own)}
                if model.knows(row):
                    rows.append(numeric_safe(model.spec, row))
                    where.append((i, j))
        est.append(ps)
    if rows and model is not None:
        for (i, j), p in zip(where, model.predict_proba(rows).tolist()):
            est[i][j] = p
    w = np.zeros(len(usable))
    r = np.zeros(len(usable))
    for i, (d, ps) in enumerate(zip(usable, est)):
        pick = min(range(len(ps)), key=lambda j: (-ps[j], d.candidates[j][0]))
        if d.candidates[pick][0] == d.first:
            w[i] = 1.0 / d.p
        r[i] = float(d.accepted_first)
    sw = float(w.sum())
    return Replay(snips=float((w * r).sum() / sw) if sw > 0 else float("nan"),
                  ips=float((w * r).mean()) if len(w) else float("nan"), matched=int((w > 0).sum()),
                  decisions=len(usable), ess=float(sw ** 2 / (w ** 2).sum()) if sw > 0 else 0.0)


def seen_outcomes(log: OfferLog, rows: np.ndarray, known: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """offer -> segment -> [impressions, accepts] of the given rows, for the offers the model knows."""
    keep = set(known)
    out: dict[str, dict[str, list[int]]] = {}
    for i in np.nonzero(rows)[0].tolist():
        oid = log.offer_ids[i]
        if oid in keep:
            cell = out.setdefault(oid, {}).setdefault(log.decisions[int(log.decision[i])].segment, [0, 0])
            cell[0] += 1
            cell[1] += int(log.y[i])
    return out


def _settings(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(this job's settings, the trees' parameters) from [propensity]."""
    own = dict(LOG_SETTINGS)
    for k in LOG_SETTINGS:
        if k in cfg.propensity:
            try:
                own[k] = float(cfg.propensity[k]) if k == "holdout" else int(cfg.propensity[k])
            except (TypeError, ValueError):
                raise ValueError(f"propensity.{k}: expected a number, got {cfg.propensity[k]!r}") from None
    for k in ("min_offer_outcomes", "min_rows", "min_category_rows", "max_categories"):
        if own[k] < 1:
            raise ValueError(f"propensity.{k}: must be at least 1, got {own[k]}")
    trees = {k: v for k, v in cfg.propensity.items() if k not in LOG_SETTINGS and k != "data"}
    return own, _params(replace(cfg, propensity=trees))


def train_propensity_from_log(cfg: TrainConfig) -> PropensityResult:
    """Fit on the offer log's earlier decisions, evaluate on the latest, log to MLflow, register, and gate on roc_auc
    against the champion measured on the same hold-out."""
    own, params = _settings(cfg)
    configure(cfg.tracking_uri)
    with tqdm(total=4, desc="propensity (offer log)", disable=not cfg.progress) as bar:
        bar.set_postfix_str("data")
        log = load_offer_log(cfg.data_dir)
        n = len(log.y)
        if n < own["min_rows"]:
            raise ValueError(
                f"offer log {cfg.data_dir}: {n} offers shown with logged inputs and outcomes, need at least "
                f"{own['min_rows']} (propensity.min_rows); {log.without_inputs} decisions carry no logged inputs, "
                f"{log.not_shown} offers made have no outcome event. Serve offers, post their offer_impression/"
                "offer_accept/offer_dismiss events with the decision_id, then `recsvc drain`")
        cut = time_split(log, own["holdout"])
        hold = log.decision >= cut
        fit_rows = ~hold
        for name, part in (("training", log.y[fit_rows]), ("hold-out", log.y[hold])):
            if len(set(part.tolist())) < 2:
                raise ValueError(f"offer log {cfg.data_dir}: the {name} part has only "
                                 f"{'accepts' if part.all() else 'non-accepts'}; nothing to tell apart yet")
        fit_idx = np.nonzero(fit_rows)[0]
        hold_idx = np.nonzero(hold)[0]
        fit_list = [log.rows[i] for i in fit_idx]
        spec, known = log_spec(fit_list, [log.offer_ids[i] for i in fit_idx], own)
        if not known:
            raise ValueError(f"offer log {cfg.data_dir}: no offer has {own['min_offer_outcomes']} outcomes in the "
                             "training part yet (propensity.min_offer_outcomes): the service stays on the prior")
        bar.update()
        bar.set_postfix_str("fit")
        t = time.perf_counter()
        _, trees = fit_trees(spec.encode([numeric_safe(spec, dict(r)) for r in fit_list]), log.y[fit_rows], params)
        fit_s = time.perf_counter() - t
        offer_keys = sorted({c for c in (*spec.categorical, *spec.numeric) if c.startswith("offer.")})
        seen = seen_outcomes(log, fit_rows, known)
        model = PropensityModel(spec, trees, offer_keys,
                                {o: {s: (c[0], c[1]) for s, c in cells.items()} for o, cells in seen.items()})
        bar.update()
        bar.set_postfix_str("evaluate")
        hold_rows = [log.rows[i] for i in hold_idx]
        y_hold = log.y[hold]
        scores, knows = served_scores(model, hold_rows, log.served[hold])
        rep = replay(model, log, log.decisions[cut:])
        logged = replay(None, log, log.decisions[cut:])
        metrics = {
            "roc_auc": _auc(y_hold, scores), "model_roc_auc": _auc(y_hold[knows], scores[knows]),
            "served_roc_auc": _auc(y_hold, log.served[hold]), "model_coverage": float(knows.mean()),
            "replay_acceptance": rep.snips, "replay_ips": rep.ips, "replay_matched_decisions": float(rep.matched),
            "replay_effective_sample": rep.ess, "served_replay_acceptance": logged.snips,
            "holdout_acceptance": float(y_hold.mean()), "holdout_rows": float(hold.sum()),
            "training_rows": float(fit_rows.sum()), "known_offers": float(len(known)), "fit_seconds": fit_s,
        }
        if not math.isfinite(metrics["roc_auc"]):
            raise ValueError("offer log: roc_auc is not finite on the hold-out")
        bar.update()
        bar.set_postfix_str("log")
        fingerprint = log.fingerprint()
        until = log.decisions[cut - 1].ts

        def rejudge(current: ModelVersion) -> float | None:
            """The champion, used as the service would use it, on this job's hold-out."""
            with tempfile.TemporaryDirectory() as d:
                path = Path(mlflow.artifacts.download_artifacts(artifact_uri=current.source, dst_path=d))
                found = sorted(path.rglob("manifest.json"))
                try:
                    arrays, meta = load_bundle(found[0].parent if found else path)
                    champ = PropensityModel.from_bundle(arrays, meta)
                except ValueError:
                    return None
            value = _auc(y_hold, served_scores(champ, hold_rows, log.served[hold])[0])
            mlflow.log_metric("champion_roc_auc", value)
            return value if math.isfinite(value) else None

        run_params = {**params, **own, "source": LOG_SOURCE, "data": str(cfg.data_dir), "features": len(spec.columns),
                      "known_offers": known}
        with training_run(FAMILY, run_params, fingerprint,
                          {"source": f"offer_log:{cfg.data_dir}", HOLDOUT_TAG: HOLDOUT_DATA}) as run:
            mlflow.log_metrics(metrics)
            if knows.any():
                log_figure(calibration_figure(y_hold[knows], scores[knows]), "calibration.png")
            with tempfile.TemporaryDirectory() as d:
                save_bundle(Path(d), trees.arrays(), {
                    "family": FAMILY, "model": "gradient_boosted_trees", "source": LOG_SOURCE, "spec": spec.to_json(),
                    "columns": spec.columns, "offer_keys": offer_keys, "known_offers": known,
                    "seen_outcomes": seen, "data_until": until, "metrics": metrics,
                    "data_fingerprint": fingerprint, "created_at": time.time()})
                log_bundle(Path(d))
            promotion = register_and_promote(FAMILY, run.info.run_id, "bundle", metrics, force=cfg.force,
                                             rejudge=rejudge)
        bar.update()
    return PropensityResult(metrics, promotion, run.info.run_id, fingerprint=fingerprint)
