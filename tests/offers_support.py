"""Shared builders for the next-best-offer tests: offers, customer records, a tiny propensity model with a known
answer, and a service over either store."""

from __future__ import annotations

from typing import Any

import numpy as np

from features.offer_store import Contact, CustomerRecord, LedgerState
from features.offers import Offer
from features.propensity_model import FeatureSpec, PropensityModel, TreeEnsemble
from features.schema import Profile
from recsvc.models import PROPENSITY, SEGMENTS, LoadedModel, ModelRegistry

NOW = 1_790_000_000.0  # 2026-09-21
DAY = 86400.0
COFFEE_P = 1 / (1 + np.exp(-1.0))  # what the tiny model says for a coffee offer
OTHER_P = 1 / (1 + np.exp(2.0))  # ... and for any other type it knows


def offer(offer_id: str, **kw: Any) -> Offer:
    doc: dict[str, Any] = {"offer_id": offer_id, "name": f"offer {offer_id}",
                           "channels": {"web": {"headline": f"{offer_id} on the web"},
                                        "email": {"subject": f"{offer_id} by email"}}}
    doc.update(kw)
    import msgspec

    return msgspec.convert(doc, Offer)


def record(person: str = "c1", *, traits: dict[str, str] | None = None, country: str | None = "UK",
           items: dict[str, float] | None = None, categories: dict[str, float] | None = None,
           owned: dict[str, float] | None = None, contacts: list[Contact] | None = None,
           accepted: dict[str, float] | None = None, dismissed: dict[str, float] | None = None,
           version: int = 0, known: bool = True) -> CustomerRecord:
    prof = Profile(customer_id=person, country=country, traits=traits or {},
                   item_affinity=sorted((items or {}).items(), key=lambda kv: -kv[1]),
                   category_affinity=sorted((categories or {}).items(), key=lambda kv: -kv[1])) if known else None
    return CustomerRecord(person, prof, owned or {},
                          LedgerState(version, contacts or [], accepted or {}, dismissed or {}))


def tiny_model() -> PropensityModel:
    """P(accept) = sigmoid(+1) for offer.type "Coffee House", sigmoid(-2) for "Bar" (one tree)."""
    spec = FeatureSpec(categorical={"offer.type": ["Coffee House", "Bar"]}, ordinal={}, numeric=["context.hour"])
    trees = TreeEnsemble(feature=np.array([0, -1, -1]), threshold=np.array([0.5, 0.0, 0.0]),
                         missing_left=np.array([True, False, False]), left=np.array([1, 0, 0]),
                         right=np.array([2, 0, 0]), value=np.array([0.0, -2.0, 1.0]), tree_start=np.array([0]),
                         baseline=0.0)
    return PropensityModel(spec, trees, ["offer.type"])


def registry(model: PropensityModel | None = None, segments: list[str] | None = None) -> ModelRegistry:
    reg = ModelRegistry(None, {})
    if model is not None:
        reg.put(LoadedModel(PROPENSITY, "7", None, model, {}, NOW))
    if segments is not None:
        reg.put(LoadedModel(SEGMENTS, "2", None, {"segments": segments, "sizes": {s: 1 for s in segments}}, {}, NOW))
    return reg
