"""Offer propensity scoring with numpy alone: a generic feature encoder (customer, context and offer attributes,
described by a JSON spec) and gradient-boosted trees exported as flat arrays by training.propensity (trained on a
survey) or training.offer_log (trained on the catalog's own logged decisions and outcomes).

The same spec serves any offer catalog: an unknown category or an absent attribute encodes as missing, never an error.
Whether a model *knows* an offer (and scores it, rather than the affinity prior) is `PropensityModel.knows`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROW_CHUNK = 4096  # rows traversed at once: bounds the (rows x trees) node-index matrix


@dataclass
class FeatureSpec:
    """How attribute dicts become model columns, in this order:

    categorical: name -> known values, one-hot (an unknown value or an absent attribute: all zeros);
    ordinal: name -> values in order, encoded as the rank (unknown/absent: NaN);
    numeric: names, as floats (absent: NaN; a value that is not a number is an error naming the attribute);
    crosses: name -> (key, prefix): the rank of the ordinal attribute named prefix + row[key], e.g. the customer's
    visit frequency for the offered category: ("offer.type", "customer.visits.").
    """

    categorical: dict[str, list[str]]
    ordinal: dict[str, list[str]]
    numeric: list[str]
    crosses: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, (key, prefix) in self.crosses.items():
            if not any(o.startswith(prefix) for o in self.ordinal):
                raise ValueError(f"spec.crosses.{name}: no ordinal attribute starts with {prefix!r}")
        cols = self.columns
        if len(set(cols)) != len(cols):
            raise ValueError("spec: an attribute is listed twice")

    @property
    def columns(self) -> list[str]:
        cols = [f"{n}={v}" for n, vs in self.categorical.items() for v in vs]
        return cols + list(self.ordinal) + list(self.numeric) + list(self.crosses)

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows of attribute dicts -> a float64 matrix with `columns`."""
        cols = {c: j for j, c in enumerate(self.columns)}
        x = np.zeros((len(rows), len(cols)), dtype=np.float64)
        x[:, len(cols) - len(self.ordinal) - len(self.numeric) - len(self.crosses):] = np.nan
        ranks = {n: {v: float(i) for i, v in enumerate(vs)} for n, vs in self.ordinal.items()}
        for r, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"rows[{r}]: expected a mapping of attribute -> value, got {type(row).__name__}")
            for name in self.categorical:
                value = row.get(name)
                if value is not None:
                    j = cols.get(f"{name}={value}")
                    if j is not None:
                        x[r, j] = 1.0
            for name, rank in ranks.items():
                value = row.get(name)
                if value is not None:
                    x[r, cols[name]] = rank.get(str(value), math.nan)
            for name in self.numeric:
                value = row.get(name)
                if value is None or value == "":
                    continue
                try:
                    x[r, cols[name]] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"rows[{r}].{name}: expected a number, got {value!r}") from None
            for name, (key, prefix) in self.crosses.items():
                target = f"{prefix}{row.get(key)}"
                value = row.get(target)
                if value is not None and target in ranks:
                    x[r, cols[name]] = ranks[target].get(str(value), math.nan)
        return x

    def to_json(self) -> dict[str, Any]:
        return {"categorical": self.categorical, "ordinal": self.ordinal, "numeric": self.numeric,
                "crosses": {k: list(v) for k, v in self.crosses.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        try:
            categorical = {str(k): [str(v) for v in vs] for k, vs in dict(d["categorical"]).items()}
            ordinal = {str(k): [str(v) for v in vs] for k, vs in dict(d["ordinal"]).items()}
            numeric = [str(n) for n in d["numeric"]]
            crosses = {str(k): (str(v[0]), str(v[1])) for k, v in dict(d.get("crosses", {})).items()}
        except KeyError as exc:
            raise ValueError(f"spec: missing {exc.args[0]!r}") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"spec: malformed ({exc})") from None
        return cls(categorical, ordinal, numeric, crosses)


@dataclass
class TreeEnsemble:
    """Binary gradient-boosted trees as flat arrays; node n of tree t is at offset tree_start[t] + n.

    At an internal node go left when x[feature] <= threshold, or when x[feature] is NaN and missing_left;
    a leaf has feature -1 and its value (a raw log-odds contribution). The prediction is baseline + sum of leaves.
    """

    feature: np.ndarray  # int, -1 at leaves
    threshold: np.ndarray
    missing_left: np.ndarray  # bool
    left: np.ndarray  # child index within the tree
    right: np.ndarray
    value: np.ndarray
    tree_start: np.ndarray
    baseline: float

    def __post_init__(self) -> None:
        self.feature = np.asarray(self.feature, dtype=np.int64)
        self.threshold = np.asarray(self.threshold, dtype=np.float64)
        self.missing_left = np.asarray(self.missing_left, dtype=bool)
        self.left = np.asarray(self.left, dtype=np.int64)
        self.right = np.asarray(self.right, dtype=np.int64)
        self.value = np.asarray(self.value, dtype=np.float64)
        self.tree_start = np.asarray(self.tree_start, dtype=np.int64)
        self.baseline = float(self.baseline)
        n = len(self.feature)
        for name in ("threshold", "missing_left", "left", "right", "value"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"trees.{name}: {len(getattr(self, name))} entries, expected one per node ({n})")
        starts = self.tree_start
        if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= n:
            raise ValueError("trees.tree_start: expected increasing node offsets starting at 0")
        # children as global node indices, so all trees can be walked at once
        tree_of = np.searchsorted(self.tree_start, np.arange(n), side="right") - 1
        base = self.tree_start[tree_of]
        internal = self.feature >= 0
        self._left = np.where(internal, self.left + base, np.arange(n))
        self._right = np.where(internal, self.right + base, np.arange(n))
        if internal.any() and (self._left[internal].max() >= n or self._right[internal].max() >= n):
            raise ValueError("trees.left/right: a child index points past the nodes")
        self.n_features = int(self.feature.max()) + 1 if internal.any() else 0

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds), shape (n_rows,)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < self.n_features:
            raise ValueError(f"x: expected a 2-d array with at least {self.n_features} columns, got shape {x.shape}")
        out = np.empty(x.shape[0], dtype=np.float64)
        for lo in range(0, x.shape[0], ROW_CHUNK):
            out[lo : lo + ROW_CHUNK] = self._raw(x[lo : lo + ROW_CHUNK])
        return out

    def _raw(self, x: np.ndarray) -> np.ndarray:
        node = np.broadcast_to(self.tree_start, (x.shape[0], len(self.tree_start))).copy()
        while True:
            f = self.feature[node]
            active = f >= 0
            if not active.any():
                break
            r, t = np.nonzero(active)
            g = node[r, t]
            v = x[r, f[r, t]]
            go_left = np.where(np.isnan(v), self.missing_left[g], v <= self.threshold[g])
            node[r, t] = np.where(go_left, self._left[g], self._right[g])
        return self.baseline + self.value[node].sum(axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """P(y = 1) per row, shape (n_rows,)."""
        return 1.0 / (1.0 + np.exp(-self.raw(x)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"feature": self.feature, "threshold": self.threshold, "missing_left": self.missing_left,
                "left": self.left, "right": self.right, "value": self.value, "tree_start": self.tree_start,
                "baseline": np.array([self.baseline])}

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> "TreeEnsemble":
        names = ("feature", "threshold", "missing_left", "left", "right", "value", "tree_start", "baseline")
        missing = [k for k in names if k not in a]
        if missing:
            raise ValueError(f"trees: missing array(s) {', '.join(missing)}")
        return cls(a["feature"], a["threshold"], np.asarray(a["missing_left"]).astype(bool), a["left"], a["right"],
                   a["value"], a["tree_start"], float(np.ravel(a["baseline"])[0]))


def numeric_safe(spec: FeatureSpec, row: dict[str, Any]) -> dict[str, Any]:
    """Drop values the spec would refuse as numbers (a trait "50plus" where the model wants an age): such a value is
    missing to the model, in serving and in evaluation alike. Changes and returns `row`."""
    for name in spec.numeric:
        v = row.get(name)
        if v is not None and not isinstance(v, (int, float)):
            try:
                float(v)
            except (TypeError, ValueError):
                del row[name]
    return row


def offer_inputs(offer_id: str, value: float, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """An offer as the propensity model sees it: `offer.id`, `offer.value` and its own attributes (`offer.<name>`,
    `offer.category.<name>`: see features.offers.Offer.model_attributes). Serving and training build it alike."""
    return {"offer.id": offer_id, "offer.value": value, **attributes}


# offer -> segment -> (impressions, accepts) of the logged outcomes a model was trained on
SeenOutcomes = dict[str, dict[str, tuple[int, int]]]


@dataclass
class PropensityModel:
    """A propensity bundle ready to score attribute dicts: the spec, the trees and the offer attributes it varies.
    `seen`: the outcomes, per offer and segment, a model trained on the offer log has already learned from (the
    service counts only later outcomes in the posterior over its estimate); empty for other models."""

    spec: FeatureSpec
    trees: TreeEnsemble
    offer_keys: list[str]
    seen: SeenOutcomes = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trees.n_features > len(self.spec.columns):
            raise ValueError(f"bundle: the trees use {self.trees.n_features} columns, the spec has {len(self.spec.columns)}")
        known = {n: frozenset(vs) for n, vs in (*self.spec.categorical.items(), *self.spec.ordinal.items())
                 if n.startswith("offer.")}
        self._known_offer_values = known

    def knows(self, offer: Mapping[str, Any]) -> bool:
        """Does this model know the offer (its offer.* attributes)? Every offer.* attribute the spec encodes by
        category (or rank) must be given with a value the spec was trained on; a spec with no such attribute knows
        none (its scores would not vary with the offer). So the in-vehicle coupon model knows the coupon types it
        saw, not a retail voucher; a model trained on the offer log knows the offer ids with enough outcomes."""
        known = self._known_offer_values
        if not known:
            return False
        return all(offer.get(n) is not None and str(offer[n]) in vs for n, vs in known.items())

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.trees.predict_proba(self.spec.encode(rows))

    def score_offers(self, base: Mapping[str, Any], offers: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(accept) of each offer (its offer.* attributes) for one customer in one context (`base`)."""
        return self.predict_proba([{**base, **offer} for offer in offers])

    @classmethod
    def from_bundle(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> "PropensityModel":
        """From `features.bundle.load_bundle` output of a `recsvc-propensity` version."""
        if "spec" not in meta:
            raise ValueError("bundle meta: missing 'spec' (not a propensity bundle)")
        seen: SeenOutcomes = {}
        try:
            for offer, cells in dict(meta.get("seen_outcomes", {})).items():
                seen[str(offer)] = {str(seg): (int(c[0]), int(c[1])) for seg, c in dict(cells).items()}
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"bundle meta: malformed seen_outcomes ({exc})") from None
        return cls(FeatureSpec.from_json(meta["spec"]), TreeEnsemble.from_arrays(arrays),
                   list(meta.get("offer_keys", [])), seen)
