"""The `recsvc` command: serve, import, drain, train and the one-process local demo.

Training code is imported only when `train` or `demo` runs, so the serving image needs no training dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path

from features.content import decode_content
from features.content_catalog import catalog_for as content_catalog_for
from features.importers import ImportReport, import_events, import_online_retail
from features.offer_store import offer_store_for, publish_and_index
from features.offers import decode_offers
from features.memory_store import MemoryFeatureStore
from features.offline_log import catalog_items, drain, logged_event_ids
from features.store import FeatureStore
from recsvc.ips import parser as ips_parser
from recsvc.ips import run as ips_run
from recsvc.lifespan import open_store
from recsvc.logging import configure_logging
from recsvc.security import ConfigError
from recsvc.settings import Settings

BUNDLED_RETAIL = Path(__file__).resolve().parent.parent / "data" / "online_retail.csv.gz"
log = logging.getLogger("recsvc.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsvc", description="Personalization and recommendation service")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1)
    i = sub.add_parser("import", help="bulk-import data into the feature store")
    i.add_argument("kind", choices=["online-retail", "events"])
    i.add_argument("path", type=Path)
    i.add_argument("--batch-size", type=int, default=1000)
    d = sub.add_parser("drain", help="move the event stream into the Parquet offline log")
    d.add_argument("--follow", action="store_true", help="keep draining until interrupted")
    sub.add_parser("train", help="train models (see `recsvc train --help`)", add_help=False)
    demo = sub.add_parser("demo", help="import the bundled data, drain, train, serve (embedded store, open access)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--skip-train", action="store_true")
    offers = sub.add_parser("offers", help="next-best-offer tools (see `recsvc offers --help`)")
    offers_sub = offers.add_subparsers(dest="offers_cmd", required=True)
    ips_parser(offers_sub.add_parser("evaluate", help="IPS and SNIPS estimate of a target policy from the offline log"))
    offers_sub.add_parser("index", help="rebuild the segment and consent audience indexes from published traits")
    return p


async def _import(store: FeatureStore, kind: str, path: Path, batch_size: int) -> ImportReport:
    if kind == "online-retail":
        return await import_online_retail(store, path, batch_size=batch_size)
    return await import_events(store, path, batch_size=batch_size)


async def _import_and_drain(settings: Settings, kind: str, path: Path, batch_size: int) -> int:
    store = open_store(settings, settings.clock())
    try:
        if isinstance(store, MemoryFeatureStore):
            # A new process's embedded store knows nothing: give it what earlier imports left in the offline log, as
            # Redis keeps its dedupe markers and catalog, so a re-import is all duplicates (no new Parquet files) and
            # the catalog snapshot the drain rewrites keeps the items imported before.
            store.remember_events(logged_event_ids(settings.data_dir))
            await store.upsert_items(catalog_items(settings.data_dir))
        report = await _import(store, kind, path, batch_size)
        print(report.summary())
        if store.backend == "memory":
            # nothing else can read an in-process stream: put it in the offline log now
            print((await drain(store, settings.data_dir, progress=True)).summary())
    finally:
        await store.close()
    return 0


async def _drain(settings: Settings, follow: bool) -> int:
    store = open_store(settings, settings.clock())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if follow:  # Ctrl-C / SIGTERM finish the batch in hand, then report
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"draining into {settings.data_dir} until interrupted", file=sys.stderr)
    try:
        report = await drain(store, settings.data_dir, once=not follow, progress=not follow, stop=stop)
        print(report.summary())
    finally:
        if follow:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        await store.close()
    return 0


TRAIN_MISSING = 2


def _train(argv: list[str]) -> int:
    """Forward to `training.cli:main`, imported only now: training deps live only in the train image."""
    try:
        training_cli = importlib.import_module("training.cli")
    except ImportError as exc:
        print(f"recsvc train needs the training extras: pip install 'recsvc[train]' ({exc})", file=sys.stderr)
        return TRAIN_MISSING
    return int(training_cli.main(argv) or 0)


async def _publish_segments(store: FeatureStore, settings: Settings) -> int:
    """Put the segments champion's traits into the demo's in-process store (a Redis store gets them from training)."""
    import mlflow

    from features.bundle import load_bundle
    from features.traits import traits_from_bundle

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version_by_alias("recsvc-segments", "champion")
    path = mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=settings.tracking_uri)
    arrays, meta = load_bundle(Path(path))
    return await publish_and_index(store, traits_from_bundle(arrays, meta))  # traits + offer audience indexes


def _serve(settings: Settings, host: str, port: int, workers: int, store: FeatureStore | None = None) -> int:
    import uvicorn

    from recsvc.app import create_app

    if workers > 1 and not settings.redis_url:
        print("serve: --workers above 1 needs RECSVC_REDIS_URL (the embedded store lives in one process)",
              file=sys.stderr)
        return 2
    create_app(settings, store=store)  # fail fast (missing API keys) before uvicorn starts workers
    if store is not None:  # the demo hands over its in-process store
        uvicorn.run(create_app(settings, store=store), host=host, port=port, log_level="warning")
    else:
        uvicorn.run("recsvc.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="warning")
    return 0


DEMO_AS_OF = "2011-12-10"
DEMO_DIR = BUNDLED_RETAIL.parent / "demo"  # a sample offer and content catalog over the bundled data  # the day after the bundled Online Retail data ends


def _demo(args: argparse.Namespace) -> int:
    # The bundled data is from 2011: the demo replays it as if it were live (recency, trending, sessions), from the
    # day after it ends, unless RECSVC_AS_OF says otherwise.
    env = {"RECSVC_AS_OF": DEMO_AS_OF, "RECSVC_LOG_JSON": "false", **os.environ, "RECSVC_OPEN": "true"}
    settings = Settings.from_env(env)
    configure_logging(settings.log_json)
    print(f"demo clock: replaying from {env['RECSVC_AS_OF']} (RECSVC_AS_OF)")
    store = open_store(settings, settings.clock())

    async def load() -> None:
        report = await import_online_retail(store, BUNDLED_RETAIL)
        print(report.summary())
        print((await drain(store, settings.data_dir, progress=True)).summary())
        offers = decode_offers((DEMO_DIR / "offers.json").read_bytes())
        await offer_store_for(store).upsert_offers(offers)
        content, _ = decode_content((DEMO_DIR / "content.json").read_bytes())
        await content_catalog_for(store).upsert(content)
        print(f"demo catalogs: {len(offers)} offers, {len(content)} content items (data/demo/)")

    asyncio.run(load())
    if args.skip_train:
        pass
    elif importlib.util.find_spec("training") is None:
        print("training is not installed; serving the live features without models", file=sys.stderr)
    else:
        code = _train(["all", "--data-dir", str(settings.data_dir)])
        if code:
            print(f"training failed with code {code}; serving the live features without models", file=sys.stderr)
        else:
            try:
                print(f"published segment traits for {asyncio.run(_publish_segments(store, settings))} customers")
            except Exception as exc:  # the demo still serves live features without segments
                print(f"could not publish segment traits: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(f"serving on http://{args.host}:{args.port} (open access; OpenAPI at /schema)")
    return _serve(settings, args.host, args.port, 1, store=store)


def main(argv: list[str] | None = None) -> int:
    """The console script; returns the exit status (2 for a usage or configuration error)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"recsvc {args.cmd}: refusing to start: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "demo":
        return _demo(args)
    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a number-valued variable that is not a number
        raise ConfigError(f"environment: {exc}") from exc
    configure_logging(settings.log_json)
    if args.cmd == "serve":
        return _serve(settings, args.host, args.port, args.workers)
    if args.cmd == "import":
        if not args.path.is_file():
            print(f"path: {args.path} is not a file", file=sys.stderr)
            return 2
        if args.batch_size < 1:
            print("--batch-size: must be at least 1", file=sys.stderr)
            return 2
        try:
            return asyncio.run(_import_and_drain(settings, args.kind, args.path, args.batch_size))
        except ValueError as exc:  # importers name the problem (unsupported file type, bad header)
            print(f"import: {exc}", file=sys.stderr)
            return 2
    if args.cmd == "drain":
        return asyncio.run(_drain(settings, args.follow))
    if args.cmd == "offers":
        return _offers(settings, args)
    return 2


def _offers(settings: Settings, args: argparse.Namespace) -> int:
    """`recsvc offers evaluate ...` (recsvc/ips.py) and `recsvc offers index`."""
    if args.offers_cmd == "evaluate":
        return ips_run(args, settings.data_dir)

    async def reindex() -> int:
        store = open_store(settings, settings.clock())
        try:
            n = await offer_store_for(store).reindex()
        finally:
            await store.close()
        print(f"indexed segment and consent traits of {n} people")
        return 0

    return asyncio.run(reindex())


if __name__ == "__main__":
    raise SystemExit(main())
