"""`recsvc train recommender|segments|propensity|all` (also `python -m training`): one MLflow run per family,
a progress bar per stage, a summary table at the end; `--write-docs` regenerates the trained families' blocks of
docs/evaluation.md."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from tqdm import tqdm

from training import docs
from training.config import load_config
from training.data import load_interactions, to_ts
from training.offer_log import LOG_SOURCE, train_propensity_from_log
from training.parallel import default_workers, lanes
from training.propensity import PropensityResult, train_propensity
from training.recommender import RecommenderResult, markdown_table, train_recommender
from training.segments import SegmentsResult, train_segments
from training.tracking import prepare


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsvc train", description="Train, evaluate, register and promote models")
    p.add_argument("family", choices=["recommender", "segments", "propensity", "all"])
    p.add_argument("--data-dir", type=Path, default=None, help="offline log (default RECSVC_DATA_DIR or var/data)")
    p.add_argument("--source", default=None, help="a Parquet/CSV file of log rows instead of the offline log; "
                   f"'{LOG_SOURCE}': the offline log, propensity included (its offer decisions and outcomes)")
    p.add_argument("--split-date", default=None, help="train before this day (default 2011-11-01)")
    p.add_argument("--end-date", default=None, help="test until this day, exclusive (default 2011-12-10)")
    p.add_argument("--config", type=Path, default=None, help="TOML file with settings and [recommender] etc. tables")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FAMILY.KEY=VALUE")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--force", action="store_true", help="make the new versions champion even if not better")
    p.add_argument("--quick", action="store_true", help="fewer iterations (tests, smoke runs)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for independent work (default: 2 where there are 2 cores, 1 with --quick); "
                        "the results do not depend on it")
    p.add_argument("--write-docs", action="store_true",
                   help="rewrite this run's families' results blocks in docs/evaluation.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get("RECSVC_DATA_DIR", "var/data"))
    from_log = args.source == LOG_SOURCE
    try:
        cfg = load_config(args.config, args.overrides, data_dir=data_dir, source=None if from_log else args.source,
                          split_date=args.split_date, end_date=args.end_date, seed=args.seed, tracking_uri=args.tracking_uri,
                          force=args.force or None, quick=args.quick or None, progress=not args.no_progress,
                          workers=args.workers)
    except (ValueError, OSError) as exc:
        print(f"config: {exc}", file=sys.stderr)
        return 2
    if cfg.workers < 0:
        print(f"config: workers must be at least 1 (or 0: automatic), got {cfg.workers}", file=sys.stderr)
        return 2
    families = ["recommender", "segments", "propensity"] if args.family == "all" else [args.family]
    summary: list[tuple[str, str, str, str, float, float | None, float]] = []
    ds = None
    rec: RecommenderResult | None = None
    seg: SegmentsResult | None = None
    prop: PropensityResult | None = None
    try:
        for day in (cfg.split_date, cfg.end_date):
            to_ts(day)  # a bad date fails here, before minutes of work
        # the helper processes start now, importing what they need while this one loads the data
        workers = (cfg.workers or default_workers(cfg.quick)) if "recommender" in families else 1
        with lanes(workers) as lane:
            store = lane.submit(prepare, cfg.tracking_uri) if lane.parallel else None
            if {"recommender", "segments"} & set(families):
                with tqdm(total=1, desc="data: load interactions", disable=not cfg.progress) as bar:
                    ds = load_interactions(cfg.source, cfg.data_dir)
                    bar.update()
                if ds.events.empty:
                    print(f"no events in {ds.source}: import data first (recsvc import ...; recsvc drain)",
                          file=sys.stderr)
                    return 2
            if store is not None:
                store.result()
            for family in families:
                t = time.perf_counter()
                if family == "recommender":
                    rec = train_recommender(cfg, ds, lane)
                    promo = rec.promotion
                elif family == "segments":
                    seg = train_segments(cfg, ds)
                    promo = seg.promotion
                elif from_log:  # learned from the offer log (training.offer_log); docs/evaluation.md is the survey's
                    promo = train_propensity_from_log(cfg).promotion
                else:
                    prop = train_propensity(cfg)
                    promo = prop.promotion
                if promo is None:
                    raise RuntimeError(f"{family}: the job returned no promotion result")
                summary.append((promo.family, promo.version, promo.alias, promo.metric, promo.value,
                                promo.champion_value, time.perf_counter() - t))
                if promo.forced:
                    print(f"NOTE: {promo.family} v{promo.version} made champion by --force: {promo.reason}")
    except ValueError as exc:  # bad data or settings (DataError is one): a message naming the field, exit 2
        print(f"train {args.family}: {exc}", file=sys.stderr)
        return 2
    print()
    print(f"{'family':20} {'version':>7} {'alias':>10} {'metric':>16} {'value':>8} {'previous':>9} {'seconds':>8}")
    for fam, ver, alias, metric, value, prev, secs in summary:
        prev_s = f"{prev:.4f}" if prev is not None else "-"
        print(f"{fam:20} {ver:>7} {alias:>10} {metric:>16} {value:8.4f} {prev_s:>9} {secs:8.1f}")
    if rec is not None:
        print()
        print(markdown_table(rec.rows))
    if args.write_docs:
        command = f"recsvc train {args.family} --write-docs"
        written = docs.write_docs(cfg, rec=rec, seg=seg, prop=prop, command=command, path=docs.DOCS)
        print(f"\nwrote the {', '.join(written)} block(s) of {docs.DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
