"""The model artifact format shared by training and the service: arrays in .npz, ids and metadata in JSON.

No pickle anywhere: arrays load with allow_pickle=False, and every file's sha256 is recorded and checked on load,
so a truncated or tampered artifact is refused instead of served.
"""

from __future__ import annotations

import hashlib
import json
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
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_bundle(directory: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"arrays[{name!r}]: object arrays would need pickle; store ids in meta instead")
    np.savez(directory / ARRAYS, **arrays)
    (directory / META).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, ensure_ascii=False, default=float), encoding="utf-8")
    manifest = {name: _sha(directory / name) for name in (ARRAYS, META)}
    (directory / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return directory


def load_bundle(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptBundle(f"{directory}: no readable manifest ({exc})") from exc
    for name, digest in manifest.items():
        path = directory / name
        if not path.is_file() or _sha(path) != digest:
            raise CorruptBundle(f"{directory}/{name}: checksum mismatch or missing")
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptBundle(f"{directory}: format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    with np.load(directory / ARRAYS, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, meta
