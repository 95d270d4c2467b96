"""The champions the service serves: loaded from the MLflow registry by alias, swapped in whole, never half.

A `ModelRegistry` holds one immutable `LoadedModel` per family. `refresh()` asks MLflow which version holds the
`champion` alias and loads any that changed (in a worker thread: downloads and checksum checks must not block the
event loop), then replaces the reference. A request keeps the object it started with, so a swap never drops or fails a
request in flight. MLflow unreachable, or an artifact that fails its checksums or cannot be built: the last good model
stays, and the failure is reported by `status()` (and /ready, /metrics).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np

from features.bundle import CorruptBundle, load_bundle

log = logging.getLogger("recsvc.models")

T = TypeVar("T")
Builder = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], Any]

RECOMMENDER = "recsvc-recommender"
SEGMENTS = "recsvc-segments"
PROPENSITY = "recsvc-propensity"
FAMILIES = (RECOMMENDER, SEGMENTS, PROPENSITY)
ALIAS = "champion"


@dataclass(frozen=True)
class LoadedModel(Generic[T]):
    """One family's champion, ready to use: `model` is what its builder made of the bundle."""

    family: str
    version: str
    run_id: str | None
    model: T
    meta: Mapping[str, Any]
    loaded_at: float

    @property
    def label(self) -> str:
        """How answers name the model: `recsvc-recommender@3`."""
        return f"{self.family}@{self.version}"


class FamilyStatus(msgspec.Struct, omit_defaults=True):
    family: str
    version: str | None = None
    loaded_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


class RefreshReport(msgspec.Struct):
    checked_at: float
    loaded: dict[str, str]  # family -> version newly loaded
    unchanged: dict[str, str]
    missing: list[str]  # families without a champion
    errors: dict[str, str]  # family -> why the last good model stays


# A serving process asks MLflow in the background and must not wait minutes on a tracking server that is down:
# fewer, shorter HTTP retries than MLflow's defaults (7 retries, 120 s), unless the environment says otherwise.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


@dataclass
class ChampionSource:
    """Where champions come from: an MLflow tracking/registry URI. `cache_dir` keeps downloaded bundles."""

    tracking_uri: str
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "recsvc-models")

    def __post_init__(self) -> None:
        for name, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)

    def champion_version(self, family: str) -> tuple[str, str | None, str] | None:
        """(version, run_id, source uri) of the family's champion, None when there is none. Blocking."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            mv = client.get_model_version_by_alias(family, ALIAS)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
        return str(mv.version), mv.run_id, str(mv.source)

    def download(self, family: str, version: str, source: str) -> Path:
        """The bundle directory of one version, downloaded once into the cache. Blocking."""
        import mlflow

        dst = self.cache_dir / f"{family}-v{version}-{os.getpid()}"
        if dst.exists() and any(dst.rglob("manifest.json")):
            return _bundle_dir(dst)
        dst.mkdir(parents=True, exist_ok=True)
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=self.tracking_uri)
        return _bundle_dir(Path(path))


def _bundle_dir(path: Path) -> Path:
    if (path / "manifest.json").exists():
        return path
    found = sorted(path.rglob("manifest.json"))
    if not found:
        raise CorruptBundle(f"{path}: no manifest.json in the downloaded artifact")
    return found[0].parent


class ModelRegistry:
    """The service's champions. Reads are plain attribute lookups; `refresh()` swaps whole models."""

    def __init__(self, source: ChampionSource | None, builders: Mapping[str, Builder],
                 families: tuple[str, ...] = FAMILIES) -> None:
        self.source = source
        self.builders = dict(builders)
        self.families = families
        self._models: dict[str, LoadedModel[Any]] = {}
        self._status: dict[str, FamilyStatus] = {f: FamilyStatus(family=f) for f in families}
        self._lock = asyncio.Lock()
        self.last_check: float | None = None
        self.last_check_ok: bool = False

    def get(self, family: str) -> LoadedModel[Any] | None:
        return self._models.get(family)

    def put(self, loaded: LoadedModel[Any]) -> None:
        """Install a model directly (tests, or a model built in-process)."""
        self._models = {**self._models, loaded.family: loaded}
        # a model is hundreds of thousands of long-lived objects (id maps, caches): keep them out of every later
        # garbage collection, whose pauses would otherwise show in the request latency tail
        gc.freeze()
        self._status[loaded.family] = FamilyStatus(family=loaded.family, version=loaded.version, loaded_at=loaded.loaded_at)

    def install(self, family: str, version: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                run_id: str | None = None) -> LoadedModel[Any]:
        """Build and install a model from bundle contents (what refresh does after a download)."""
        model = self.builders[family](arrays, meta)
        loaded = LoadedModel(family, version, run_id, model, meta, time.time())
        self.put(loaded)
        return loaded

    def status(self) -> list[FamilyStatus]:
        return [self._status[f] for f in self.families]

    @property
    def versions(self) -> dict[str, str]:
        return {f: m.version for f, m in self._models.items()}

    async def refresh(self) -> RefreshReport:
        """Load every family whose champion changed. Never raises for MLflow or artifact trouble."""
        async with self._lock:
            report = RefreshReport(checked_at=time.time(), loaded={}, unchanged={}, missing=[], errors={})
            if self.source is None:
                report.errors["*"] = "no model source configured"
                return report
            for family in self.families:
                if family not in self.builders:
                    continue
                try:
                    found = await asyncio.to_thread(self.source.champion_version, family)
                except Exception as exc:  # MLflow unreachable or misconfigured: keep serving what we have
                    self._fail(report, family, f"registry: {type(exc).__name__}: {_short(exc)}")
                    continue
                if found is None:
                    report.missing.append(family)
                    continue
                version, run_id, uri = found
                current = self._models.get(family)
                if current is not None and current.version == version:
                    report.unchanged[family] = version
                    continue
                try:
                    loaded = await asyncio.to_thread(self._load, family, version, run_id, uri)
                except Exception as exc:  # corrupt or incompatible artifact: refuse it, keep the last good one
                    self._fail(report, family, f"v{version} refused: {type(exc).__name__}: {_short(exc)}")
                    continue
                self.put(loaded)
                report.loaded[family] = version
                log.info("loaded %s (run %s)", loaded.label, run_id)
            self.last_check = report.checked_at
            self.last_check_ok = not report.errors
            return report

    def _load(self, family: str, version: str, run_id: str | None, uri: str) -> LoadedModel[Any]:
        assert self.source is not None
        path = self.source.download(family, version, uri)
        arrays, meta = load_bundle(path)
        model = self.builders[family](arrays, meta)
        return LoadedModel(family, version, run_id, model, meta, time.time())

    def _fail(self, report: RefreshReport, family: str, why: str) -> None:
        report.errors[family] = why
        st = self._status[family]
        self._status[family] = FamilyStatus(family=family, version=st.version, loaded_at=st.loaded_at,
                                            last_error=why, last_error_at=report.checked_at)
        log.warning("model %s: %s; keeping %s", family, why,
                    f"v{st.version}" if st.version else "no model (fallbacks serve)")

    async def poll(self, interval_s: float, stop: asyncio.Event) -> None:
        """Refresh every `interval_s` until `stop` is set (the lifespan runs this as a task)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                await self.refresh()


def _short(exc: Exception, limit: int = 300) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
