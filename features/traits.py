"""Offline results published onto people in the online store: segment, cluster, churn risk, 90-day value.

The segments bundle (features/bundle.py) carries them; `traits_from_bundle` turns it into what `set_traits` takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from features.store import FeatureStore


def traits_from_bundle(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    ids = meta["customer_ids"]
    segment = meta["segment"]
    return {
        cid: {
            "segment": segment[i],
            "cluster": str(int(arrays["cluster"][i])),
            "churn_risk": f"{float(arrays['churn_risk'][i]):.4f}",
            "cltv_90d": f"{float(arrays['cltv_90d'][i]):.2f}",
            "rfm": "".join(str(int(v)) for v in arrays["rfm"][i]),
        }
        for i, cid in enumerate(ids)
    }


async def publish_traits(store: FeatureStore, traits: Mapping[str, Mapping[str, str]], chunk: int = 1000) -> int:
    items = list(traits.items())
    for start in range(0, len(items), chunk):
        await store.set_traits(dict(items[start : start + chunk]))
    return len(items)
