"""Offline results published onto people in the online store: segment, cluster, churn risk, 90-day value, RFM.

The segments bundle (features/bundle.py) carries them; `traits_from_bundle` turns it into what `set_traits` takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from features.store import FeatureStore

TRAITS = ("segment", "cluster", "churn_risk", "cltv_90d", "rfm")


def traits_from_bundle(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """customer id -> {segment, cluster, churn_risk, cltv_90d, rfm} from a `recsvc-segments` bundle."""
    try:
        ids, segment = list(meta["customer_ids"]), list(meta["segment"])
        cluster, churn, cltv, rfm = arrays["cluster"], arrays["churn_risk"], arrays["cltv_90d"], arrays["rfm"]
    except KeyError as exc:
        raise ValueError(f"segments bundle: missing {exc.args[0]!r}") from None
    for name, seq in (("segment", segment), ("cluster", cluster), ("churn_risk", churn), ("cltv_90d", cltv), ("rfm", rfm)):
        if len(seq) != len(ids):
            raise ValueError(f"segments bundle: {name} has {len(seq)} entries for {len(ids)} customer_ids")
    return {
        str(cid): {
            "segment": str(segment[i]),
            "cluster": str(int(cluster[i])),
            "churn_risk": f"{float(churn[i]):.4f}",
            "cltv_90d": f"{float(cltv[i]):.2f}",
            "rfm": "".join(str(int(v)) for v in rfm[i]),
        }
        for i, cid in enumerate(ids)
    }


async def publish_traits(store: FeatureStore, traits: Mapping[str, Mapping[str, str]], chunk: int = 1000) -> int:
    """Write traits in chunks; people the store has erased since training are skipped. Returns how many were written."""
    if chunk < 1:
        raise ValueError(f"chunk: expected a positive size, got {chunk}")
    for person, values in traits.items():
        if not isinstance(person, str) or not person:
            raise ValueError(f"traits: person ids must be non-empty strings, got {person!r}")
        if not isinstance(values, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            raise ValueError(f"traits[{person!r}]: expected a mapping of trait name -> string value")
    erased = await store.erased_ids()
    items = [(p, v) for p, v in traits.items() if p not in erased]
    for start in range(0, len(items), chunk):
        await store.set_traits(dict(items[start : start + chunk]))
    return len(items)
