"""Training benchmark: `recsvc train all` wall and CPU time on Online Retail; fit time at 1x, 4x and 16x the
interactions (users resampled with new ids); our ALS step against a bare implicit fit on the same matrix; with
--rerank, the re-ranker's validation-window work (components, candidate features, trees) at the same scales.

Usage: python benchmarks/train.py --data-dir var/data   (the bundled data imported and drained there)
       python benchmarks/train.py --skip-train-all --plot docs/img/train_scaling.png
       python benchmarks/train.py --skip-train-all --rerank
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares

from training.config import TrainConfig
from training.data import build_trainset, load_dataset, to_ts
from training.models.base import TrainSet
from training.models.blend import Window, fit_classifier, window_rows
from training.models.implicit_models import ALS, BPR, ItemKNN, confidence
from training.recommender import rerank_params, validation_windows


def scaled(train: TrainSet, factor: int, seed: int = 0) -> TrainSet:
    """`factor` copies of every user, each dropping 10% of its interactions at random."""
    rng = np.random.default_rng(seed)
    mats = []
    for _ in range(factor):
        m = train.weights.tocoo()
        keep = rng.random(m.nnz) > 0.1
        mats.append(sp.csr_matrix((m.data[keep], (m.row[keep], m.col[keep])), shape=m.shape))
    w = sp.vstack(mats).tocsr()
    n = w.shape[0]
    return TrainSet(user_ids=[f"u{i}" for i in range(n)], item_ids=train.item_ids, weights=w,
                    purchases=sp.vstack([train.purchases] * factor).tocsr(),
                    last_ts=sp.vstack([train.last_ts] * factor).tocsr(), split_ts=train.split_ts,
                    user_country=train.user_country * factor, item_title=train.item_title,
                    item_categories=train.item_categories, item_price=train.item_price,
                    user_segment=train.user_segment * factor)


def scaled_window(w: Window, factor: int) -> Window:
    """The validation window with `factor` copies of its customers (as `scaled`), each with the same purchases."""
    n = w.train.n_users
    users = np.concatenate([w.users + k * n for k in range(factor)])
    return Window(scaled(w.train, factor), users, w.relevant * factor)


def rerank_table(ds, split: float) -> None:  # type: ignore[no-untyped-def]
    """The newest validation window's work at 1x, 4x and 16x: one process, one thread, CPU seconds."""
    rp = rerank_params(TrainConfig())
    base = validation_windows(ds, split, 39, 1, None, 120.0)[0]
    print("\n| interactions | window customers | candidate rows | components + features s | trees (all) s |")
    print("|---|---|---|---|---|")
    for factor in (1, 4, 16):
        w = scaled_window(base, factor)
        t = time.process_time()
        rows = window_rows(w, rp)
        feats = time.process_time() - t
        t = time.process_time()
        fit_classifier(rows.x["all"], rows.y["all"], rp)
        trees = time.process_time() - t
        print(f"| {w.train.weights.nnz:,} ({factor}x) | {len(w.users):,} | {len(rows.y['all']):,} | {feats:.1f} "
              f"| {trees:.1f} |")


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def plot_growth(growth: dict[str, list[tuple[int, float]]], path: Path, machine: str) -> None:
    """Fit seconds against interactions on log-log axes, with the slope-1 line (linear growth) through each model's
    first point for comparison."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for name, points in growth.items():
        xs, ys = zip(*points)
        line = ax.plot(xs, ys, marker="o", label=name)[0]
        ax.plot(xs, [ys[0] * x / xs[0] for x in xs], linestyle=":", color=line.get_color(), linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions (Online Retail resampled 1x, 4x, 16x)")
    ax.set_ylabel("fit seconds (one thread)")
    ax.set_title(f"Fit time growth, {machine}, {date.today()} (dotted: linear)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="var/data")
    ap.add_argument("--skip-train-all", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="passed to train all (default: its own)")
    ap.add_argument("--rerank", action="store_true", help="also time the re-ranker's window work at 1x, 4x, 16x")
    ap.add_argument("--plot", default=None, help="also draw fit time against interactions (log-log) into this PNG")
    args = ap.parse_args()
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    print(f"# training benchmark, {date.today()}, {machine}, OPENBLAS_NUM_THREADS=1\n")
    if not args.skip_train_all:
        with tempfile.TemporaryDirectory() as d:
            workers = [] if args.workers is None else ["--workers", str(args.workers)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "training", "all", "--data-dir", args.data_dir, "--no-progress",
                            "--tracking-uri", f"sqlite:///{d}/mlflow.db", *workers], check=True, capture_output=True,
                           env={**os.environ, "RECSVC_ARTIFACT_ROOT": Path(d, "a").as_uri()})
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the job and its helper process
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            print("| `recsvc train all` on Online Retail (3 families, 9 recommender models, MLflow; workers "
                  f"{args.workers or 'default'}) | {wall:.1f} s | CPU {cpu:.1f} s (all processes) |\n")
    ds = load_dataset(None, args.data_dir)
    base = build_trainset(ds, to_ts("2011-11-01"))
    print("| interactions | users | ALS fit s | BM25 item-kNN fit s | BPR fit s |")
    print("|---|---|---|---|---|")
    growth: dict[str, list[tuple[int, float]]] = {"ALS": [], "BM25 item-kNN": [], "BPR": []}
    for factor in (1, 4, 16):
        tr = scaled(base, factor)
        als = timed(lambda: ALS().fit(tr), 1 if factor == 16 else 3)
        knn = timed(lambda: ItemKNN("bm25").fit(tr), 1 if factor == 16 else 3)
        bpr = timed(lambda: BPR().fit(tr), 1)
        print(f"| {tr.weights.nnz:,} ({factor}x) | {tr.n_users:,} | {als:.2f} | {knn:.2f} | {bpr:.2f} |")
        for name, secs in zip(growth, (als, knn, bpr)):
            growth[name].append((tr.weights.nnz, secs))
    if args.plot:
        plot_growth(growth, Path(args.plot), machine)
    conf = confidence(base, 2.0)
    ours = timed(lambda: ALS().fit(base), 5)
    bare = timed(lambda: AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15, random_state=7,
                                                 num_threads=1).fit(conf, show_progress=False), 5)
    print(f"\n| ALS in the pipeline (confidence + fit + factors to numpy) | {ours:.2f} s "
          f"| bare implicit fit, same matrix | {bare:.2f} s | ratio {ours / bare:.2f}x |")
    if args.rerank:
        rerank_table(ds, to_ts("2011-11-01"))


if __name__ == "__main__":
    main()
