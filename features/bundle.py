"""The model artifact format shared by training and the service: arrays in one .npz, ids and metadata in JSON.

No pickle anywhere: arrays load with allow_pickle=False, and every file's sha256 is recorded (in meta["files"] and in
manifest.json, which also covers meta.json) and checked on load, so a truncated or tampered artifact is refused.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
ARRAYS = "arrays.npz"
META = "meta.json"
MANIFEST = "manifest.json"


class CorruptBundle(Exception):
    """The artifact does not match its manifest, or is not a bundle at all."""


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(o: object) -> object:
    """numpy scalars and small arrays in meta become plain JSON numbers and lists."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray) and o.dtype != object:
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serializable")


def save_bundle(directory: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write arrays.npz, meta.json (with format_version and the arrays file's sha256) and manifest.json."""
    directory = Path(directory)
    clean: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        arr = np.asarray(a)
        if arr.dtype == object:
            raise TypeError(f"arrays[{name!r}]: object arrays would need pickle; store ids in meta instead")
        clean[name] = arr
    try:
        meta_text = json.dumps({**meta, "format_version": FORMAT_VERSION}, ensure_ascii=False, default=_plain)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta: not JSON-serializable ({exc})") from exc
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / ARRAYS, **clean)
    full = json.loads(meta_text)
    full["files"] = {ARRAYS: _sha(directory / ARRAYS)}
    (directory / META).write_text(json.dumps(full, ensure_ascii=False), encoding="utf-8")
    manifest = {name: _sha(directory / name) for name in (ARRAYS, META)}
    (directory / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return directory


def load_bundle(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata, after checking every file against its recorded sha256; CorruptBundle otherwise."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptBundle(f"{directory}: no readable {MANIFEST} ({exc})") from exc
    if not isinstance(manifest, dict) or set(manifest) != {ARRAYS, META}:
        raise CorruptBundle(f"{directory}/{MANIFEST}: expected sha256 entries for {ARRAYS} and {META}")
    for name, digest in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CorruptBundle(f"{directory}/{name}: missing")
        if _sha(path) != digest:
            raise CorruptBundle(f"{directory}/{name}: sha256 mismatch (corrupted or modified)")
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise CorruptBundle(f"{directory}/{META}: expected a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptBundle(f"{directory}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    if meta.get("files", {}).get(ARRAYS) != manifest[ARRAYS]:
        raise CorruptBundle(f"{directory}/{META}: files.{ARRAYS} disagrees with the manifest")
    try:
        with np.load(directory / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CorruptBundle(f"{directory}/{ARRAYS}: unreadable ({exc})") from exc
    return arrays, meta
