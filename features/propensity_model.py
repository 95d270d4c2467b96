"""Offer propensity scoring with numpy alone: a generic feature encoder (customer, context and offer attributes,
described by a JSON spec) and gradient-boosted trees exported as arrays by training.propensity.

The same spec serves any offer catalog: an attribute the spec does not know encodes as missing, never an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class FeatureSpec:
    """categorical: name -> known values (one-hot); ordinal: name -> values in order (rank); numeric: names."""

    categorical: dict[str, list[str]]
    ordinal: dict[str, list[str]]
    numeric: list[str]

    @property
    def columns(self) -> list[str]:
        cols = [f"{n}={v}" for n, vs in self.categorical.items() for v in vs]
        return cols + list(self.ordinal) + list(self.numeric)

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows of attribute dicts -> a float matrix; unknown values and absent attributes are NaN/0."""
        cols = {c: j for j, c in enumerate(self.columns)}
        x = np.zeros((len(rows), len(cols)), dtype=np.float64)
        ranks = {n: {v: i for i, v in enumerate(vs)} for n, vs in self.ordinal.items()}
        for r, row in enumerate(rows):
            for name in self.categorical:
                j = cols.get(f"{name}={row.get(name)}")
                if j is not None:
                    x[r, j] = 1.0
            for name, rank in ranks.items():
                x[r, cols[name]] = rank.get(str(row.get(name)), np.nan)
            for name in self.numeric:
                v = row.get(name)
                x[r, cols[name]] = float(v) if v is not None and v != "" else np.nan
        return x

    def to_json(self) -> dict[str, Any]:
        return {"categorical": self.categorical, "ordinal": self.ordinal, "numeric": self.numeric}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        return cls(dict(d["categorical"]), dict(d["ordinal"]), list(d["numeric"]))


@dataclass
class TreeEnsemble:
    """Binary gradient-boosted trees as flat arrays; node n of tree t is at offset tree_start[t] + n."""

    feature: np.ndarray  # int, -1 at leaves
    threshold: np.ndarray  # go left when x <= threshold
    missing_left: np.ndarray  # bool: NaN goes left
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray  # leaf values (raw log-odds contributions)
    tree_start: np.ndarray
    baseline: float

    def raw(self, x: np.ndarray) -> np.ndarray:
        out = np.full(x.shape[0], self.baseline, dtype=np.float64)
        rows = np.arange(x.shape[0])
        for start in self.tree_start:
            node = np.zeros(x.shape[0], dtype=np.int64)
            while True:
                g = start + node
                f = self.feature[g]
                active = f >= 0
                if not active.any():
                    break
                v = x[rows[active], f[active]]
                go_left = np.where(np.isnan(v), self.missing_left[g[active]], v <= self.threshold[g[active]])
                node[active] = np.where(go_left, self.left[g[active]], self.right[g[active]])
            out += self.value[start + node]
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.raw(x)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"feature": self.feature, "threshold": self.threshold, "missing_left": self.missing_left,
                "left": self.left, "right": self.right, "value": self.value, "tree_start": self.tree_start,
                "baseline": np.array([self.baseline])}

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> "TreeEnsemble":
        return cls(a["feature"], a["threshold"], a["missing_left"].astype(bool), a["left"], a["right"], a["value"],
                   a["tree_start"], float(a["baseline"][0]))
