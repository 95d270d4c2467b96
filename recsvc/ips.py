"""Off-policy evaluation of offer policies from the offline log: inverse propensity scoring (IPS) and its
self-normalized variant (SNIPS), with confidence intervals.

Every offer decision logs its candidates (the offers eligible within the caps, with their greedy scores) and, per
entry, the probability `p` with which the logging policy put it at its rank. The evaluated action is the first
choice (rank 0); its reward is 1 when an `offer_accept` event carries the decision's id and that offer (or the
offer's value, with --reward value). For a target policy pi: IPS = mean(pi(a|x) / p * r); SNIPS divides by
sum(pi(a|x) / p) instead of n. Decisions with nothing to choose from are left out (both policies show nothing).

`recsvc offers evaluate --policy greedy|uniform|logging [--data-dir var/data] [--reward accept|value] ...`
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.clock import parse_instant
from features.offline_log import (
    erased_closure,
    erased_ids,
    link_pairs,
    read_decisions,
    read_events,
    read_links,
    without_erased,
)

POLICIES = ("greedy", "uniform", "logging")
ID_COLUMNS = ("customer_id", "person_id", "anonymous_id", "device_id", "email_hash")  # whose event it is
OFFER_SURFACES = ("offers", "export")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class LoggedDecision:
    decision_id: str
    action: str  # the offer at rank 0
    p: float  # probability the logging policy chose it
    candidates: tuple[tuple[str, float], ...]  # (offer, greedy score), eligible within the caps
    value: float
    reward: float


@dataclass(frozen=True)
class Estimate:
    policy: str
    reward: str
    decisions: int  # evaluated (a first choice and candidates)
    skipped: int  # logged decisions with nothing to choose from
    logged_mean: float  # the logging policy's own average reward (on-policy)
    ips: float
    ips_low: float
    ips_high: float
    snips: float
    snips_low: float
    snips_high: float
    ess: float  # effective sample size (sum w)^2 / sum w^2
    max_weight: float
    matched: int  # decisions whose logged first choice the target policy could also take (w > 0)


def greedy_choice(candidates: Sequence[tuple[str, float]]) -> str:
    """Best greedy score, ties to the smaller offer id: the live policy's greedy order."""
    return min(candidates, key=lambda c: (-c[1], c[0]))[0]


def target_probability(policy: str, d: LoggedDecision) -> float:
    if policy == "greedy":
        return 1.0 if d.action == greedy_choice(d.candidates) else 0.0
    if policy == "uniform":
        return 1.0 / len(d.candidates) if any(c[0] == d.action for c in d.candidates) else 0.0
    if policy == "logging":
        return d.p
    raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")


def estimate(rewards: np.ndarray, weights: np.ndarray, *, bootstrap: int = 1000, seed: int = 0
             ) -> tuple[float, float, float, float, float, float]:
    """(IPS, its 95% normal interval, SNIPS, its 95% bootstrap percentile interval)."""
    n = len(rewards)
    if n == 0:
        nan = math.nan
        return nan, nan, nan, nan, nan, nan
    wr = weights * rewards
    ips = float(wr.mean())
    half = Z95 * float(wr.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    sw = float(weights.sum())
    snips = float(wr.sum() / sw) if sw > 0 else math.nan
    lo = hi = math.nan
    if bootstrap > 0 and sw > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(bootstrap, n))
        bw = weights[idx]
        den = bw.sum(axis=1)
        ok = den > 0
        boots = (bw * rewards[idx]).sum(axis=1)[ok] / den[ok]
        if len(boots):
            lo, hi = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
    return ips, ips - half, ips + half, snips, lo, hi


def evaluate(decisions: Sequence[LoggedDecision], policy: str, reward: str = "accept", *, skipped: int = 0,
             bootstrap: int = 1000, seed: int = 0) -> Estimate:
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
    r = np.array([d.reward for d in decisions], dtype=np.float64)
    p = np.array([d.p for d in decisions], dtype=np.float64)
    t = np.array([target_probability(policy, d) for d in decisions], dtype=np.float64)
    w = t / p if len(p) else p
    ips, ilo, ihi, snips, slo, shi = estimate(r, w, bootstrap=bootstrap, seed=seed)
    ess = float(w.sum() ** 2 / (w ** 2).sum()) if len(w) and (w ** 2).sum() > 0 else 0.0
    return Estimate(policy, reward, len(decisions), skipped, float(r.mean()) if len(r) else math.nan, ips, ilo, ihi,
                    snips, slo, shi, ess, float(w.max()) if len(w) else 0.0, int((w > 0).sum()))


def load_logged(data_dir: Path, *, start: float | None = None, end: float | None = None, channel: str | None = None,
                reward: str = "accept") -> tuple[list[LoggedDecision], int]:
    """Offer decisions joined to their accept events on decision_id; (decisions, skipped without candidates).
    Erased people are left out with every alias ever linked to them (features.offline_log.erased_closure)."""
    if reward not in ("accept", "value"):
        raise ValueError(f"reward: expected accept or value, got {reward!r}")
    # an erased person's decisions and outcomes go, and so do those of every alias ever linked to them (read_* drop
    # only the erased ids' own rows), as training drops them
    erased = erased_ids(data_dir)
    gone = erased_closure(erased, link_pairs(read_links(data_dir))) if erased else set()
    dec = without_erased(read_decisions(data_dir, start, end), gone, erased)
    if dec.num_rows:
        dec = dec.filter(pc.is_in(dec["surface"], value_set=pa.array(list(OFFER_SURFACES))))
    if channel is not None and dec.num_rows:
        dec = dec.filter(pc.equal(dec["channel"], channel))
    ev = without_erased(read_events(data_dir, start, columns=["type", "offer_id", "decision_id", *ID_COLUMNS]), gone,
                        erased)
    accepted: set[tuple[str, str]] = set()
    if ev.num_rows:
        acc = ev.filter(pc.equal(ev["type"], "offer_accept"))
        for d, o in zip(acc["decision_id"].to_pylist(), acc["offer_id"].to_pylist()):
            if d and o:
                accepted.add((d, o))
    out: list[LoggedDecision] = []
    skipped = 0
    for did, entries, context in zip(dec["decision_id"].to_pylist(), dec["entries"].to_pylist(),
                                     dec["context"].to_pylist()):
        ents = json.loads(entries or "[]")
        ctx = json.loads(context or "{}")
        logged = ctx.get("candidates") or {}
        cands = tuple((str(i), float(v)) for i, v in zip(logged.get("ids", []), logged.get("scores", [])))
        first = next((e for e in ents if e.get("rank") == 0), None)
        if first is None or not cands or not first.get("p"):
            skipped += 1
            continue
        value = float(first.get("value") or 0.0)
        hit = (did, first["id"]) in accepted
        out.append(LoggedDecision(did, str(first["id"]), float(first["p"]), cands, value,
                                  (value if reward == "value" else 1.0) if hit else 0.0))
    return out, skipped


def report(e: Estimate) -> str:
    f = lambda v: "nan" if math.isnan(v) else f"{v:.4f}"
    return "\n".join([
        f"target policy        {e.policy} (reward: {e.reward})",
        f"decisions            {e.decisions} evaluated, {e.skipped} without candidates left out",
        f"logging policy       {f(e.logged_mean)} mean reward (on-policy)",
        f"IPS                  {f(e.ips)}  95% CI [{f(e.ips_low)}, {f(e.ips_high)}] (normal)",
        f"SNIPS                {f(e.snips)}  95% CI [{f(e.snips_low)}, {f(e.snips_high)}] (bootstrap)",
        (f"effective sample     {e.ess:.1f} of {e.decisions} (max weight {e.max_weight:.2f}, "
         f"{e.matched} decisions the target agrees with)"),
    ])


def parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="recsvc offers evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", choices=POLICIES, default="greedy", help="the target policy to evaluate")
    p.add_argument("--data-dir", type=Path, default=None, help="offline log (default RECSVC_DATA_DIR or var/data)")
    p.add_argument("--reward", choices=("accept", "value"), default="accept")
    p.add_argument("--channel", default=None)
    p.add_argument("--since", default=None, help="ISO date or date-time, inclusive")
    p.add_argument("--until", default=None, help="ISO date or date-time, exclusive")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the SNIPS interval (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    return p


def run(args: argparse.Namespace, default_data_dir: Path) -> int:
    try:
        start = parse_instant(args.since) if args.since else None
        end = parse_instant(args.until) if args.until else None
    except ValueError as exc:
        print(f"--since/--until: {exc}", file=sys.stderr)
        return 2
    if args.bootstrap < 0:
        print("--bootstrap: must be 0 or more", file=sys.stderr)
        return 2
    data_dir = args.data_dir or default_data_dir
    logged, skipped = load_logged(data_dir, start=start, end=end, channel=args.channel, reward=args.reward)
    e = evaluate(logged, args.policy, args.reward, skipped=skipped, bootstrap=args.bootstrap, seed=args.seed)
    print(json.dumps(asdict(e)) if args.json else report(e))
    return 0
