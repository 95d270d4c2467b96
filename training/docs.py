"""The generated blocks of docs/evaluation.md: each family's results between its own markers, rewritten from a run by
`recsvc train <family> --write-docs`; the text around the markers is left as it is."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from training.config import TrainConfig
from training.propensity import TARGETS, PropensityResult
from training.recommender import RecommenderResult, markdown_table
from training.segments import SEGMENTS, SegmentsResult

DOCS = Path(__file__).resolve().parent.parent / "docs" / "evaluation.md"
BLOCKS = ("results", "segments", "propensity")  # markers <!-- name:start --> ... <!-- name:end -->


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _generated(command: str, cfg: TrainConfig, fingerprint: str) -> str:
    fp = f"; data fingerprint `{fingerprint[:16]}`" if fingerprint else ""
    return f"Generated {time.strftime('%Y-%m-%d')} by `{command}` (seed {cfg.seed}){fp}."


def recommender_block(rec: RecommenderResult, cfg: TrainConfig, command: str) -> str:
    verdict = "beats" if rec.beats_baselines else "does NOT beat"
    return (f"{_generated(command, cfg, rec.fingerprint)} Split {cfg.split_date}, test until {cfg.end_date} "
            f"exclusive. (a) = all items, (b) = new items only. The champion candidate `rerank` {verdict} the best "
            f"baseline on both protocols.\n\n{markdown_table(rec.rows)}")


def segments_block(seg: SegmentsResult, cfg: TrainConfig, command: str) -> str:
    m = seg.metrics
    horizon = float(cfg.segments.get("horizon_days", 90))
    customers = sum(seg.sizes.values())
    lines = [
        f"{_generated(command, cfg, seg.fingerprint)} {int(m.get('customers', customers))} customers scored; churn "
        f"and value learned on the {int(m.get('churn_train_customers', 0))} customers who bought before "
        f"{horizon:g} days from the end of the data (churn rate {_num(m.get('churn_rate'), 3)}), judged on 30% of "
        "them held out.",
        "",
        "| metric | model | baseline |",
        "|---|---|---|",
        f"| churn ROC AUC (`churn_auc`) | {_num(m.get('churn_auc'))} | 0.5000 (random) |",
        f"| churn Brier score (`churn_brier`) | {_num(m.get('churn_brier'))} | - |",
        f"| CLTV MAE, next {horizon:g} days' spend (`cltv_mae`) | {_num(m.get('cltv_mae'), 2)} | "
        f"{_num(m.get('cltv_mae_naive'), 2)} (naive: same as the last {horizon:g} days, `cltv_mae_naive`) |",
        "",
        "| segment | customers | share |",
        "|---|---|---|",
    ]
    for name in SEGMENTS:
        n = seg.sizes.get(name, 0)
        lines.append(f"| {name} | {n} | {n / customers:.1%} |" if customers else f"| {name} | {n} | - |")
    sil = sorted((int(k.removeprefix("silhouette_k")), v) for k, v in m.items() if re.fullmatch(r"silhouette_k\d+", k))
    chosen = int(m.get("clusters", 0))
    lines += ["", f"Behaviour clusters: k = {chosen}, the best silhouette of k in "
              f"{sil[0][0] if sil else '-'}..{sil[-1][0] if sil else '-'} (scored on a sample of up to 2,000 "
              "customers).", "", "| k | silhouette |", "|---|---|"]
    lines += [f"| {'**' + str(k) + '**' if k == chosen else k} | {_num(v)} |" for k, v in sil]
    return "\n".join(lines)


def propensity_block(prop: PropensityResult, cfg: TrainConfig, command: str) -> str:
    m = prop.metrics

    def met(key: str) -> str:
        value = m.get(key)
        return "-" if value is None or math.isnan(value) else ("yes" if value >= TARGETS[key] else "**no**")

    return "\n".join([
        f"{_generated(command, cfg, prop.fingerprint)} {int(m.get('holdout_rows', 0))} hold-out rows (25%); replay "
        f"matched {int(m.get('replay_matched_rows', 0))} of them (the coupon shown was the one the policy picks).",
        "",
        "| metric | model | random | target | met |",
        "|---|---|---|---|---|",
        f"| ROC AUC (`roc_auc`) | {_num(m.get('roc_auc'))} | 0.5000 | >= {TARGETS['roc_auc']:.2f} | {met('roc_auc')} |",
        f"| replay acceptance (`replay_acceptance`) | {_num(m.get('replay_acceptance'))} | "
        f"{_num(m.get('replay_random'))} (`replay_random`) | >= {TARGETS['replay_acceptance']:.2f} | "
        f"{met('replay_acceptance')} |",
        "",
        "Random: the same replay for a uniformly random coupon type, the mean of the types' acceptance rates on the "
        f"hold-out (the survey showed the types unequally often; its hold-out base rate is "
        f"{_num(m.get('holdout_acceptance'))}, `holdout_acceptance`).",
    ])


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block between `<!-- name:start -->` and `<!-- name:end -->` replaced by `body` (appended with
    its markers at the end when the markers are missing)."""
    if name not in BLOCKS:
        raise ValueError(f"name: expected one of {', '.join(BLOCKS)}, got {name!r}")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}\n{end}"
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        return text[:i] + block + text[j + len(end):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_docs(cfg: TrainConfig, *, rec: RecommenderResult | None = None, seg: SegmentsResult | None = None,
               prop: PropensityResult | None = None, command: str = "recsvc train all --write-docs",
               path: Path = DOCS) -> list[str]:
    """Rewrite the blocks of the families given (others stay as they are); returns the names of the blocks written."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Evaluation\n"
    written = []
    for name, result, render in (("results", rec, recommender_block), ("segments", seg, segments_block),
                                 ("propensity", prop, propensity_block)):
        if result is not None:
            text = replace_block(text, name, render(result, cfg, command))  # type: ignore[arg-type]
            written.append(name)
    if written:
        path.write_text(text, encoding="utf-8")
    return written
