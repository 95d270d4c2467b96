"""Who counts as a customer, and customers' RFM features, quintile scores and named segments: pure pandas functions
shared by the training set (each customer's segment at the split) and the segments job."""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY = 86400.0
HORIZON = 90 * DAY
SEGMENTS = ("champions", "loyal", "potential", "new", "at risk", "hibernating", "lost")
CLUSTER_FEATURES = ["recency_days", "frequency", "monetary", "tenure_days", "avg_basket"]
MODEL_FEATURES = CLUSTER_FEATURES + ["spend_90d", "frequency_90d", "returns"]


ANONYMOUS_PREFIXES = ("anonymous:", "device:", "email:")


def is_customer(user: str) -> bool:
    """Anonymous people are `anonymous:…`, `device:…`, `email:…`; they train co-occurrence, not evaluation."""
    return not user.startswith(ANONYMOUS_PREFIXES)


def customers_mask(users: pd.Series) -> np.ndarray:
    """`is_customer` of every entry, vectorized (a Python call per event cost a second per training set)."""
    return ~users.astype(str).str.startswith(ANONYMOUS_PREFIXES).to_numpy(dtype=bool)


def customer_features(events: pd.DataFrame, at: float, horizon: float = HORIZON) -> pd.DataFrame:
    """One row per customer with a purchase before `at` (anonymous people excluded):

    recency_days (since the last purchase), frequency (distinct purchase days), monetary (purchases minus returns),
    tenure_days (since the first purchase), avg_basket (monetary per purchase day), spend_90d and frequency_90d
    (purchases in the `horizon` before `at`), returns (return events).
    """
    ev = events[(events["ts"] < at).to_numpy() & customers_mask(events["user"])]
    buys = ev[ev["type"] == "purchase"]
    rets = ev[ev["type"] == "return"]
    if buys.empty:
        return pd.DataFrame(columns=MODEL_FEATURES, dtype=float)
    buys = buys.assign(day=(buys["ts"] // DAY).astype(np.int64))
    g = buys.groupby("user")
    spent = g["value"].sum()
    returned = rets.groupby("user")["value"].sum().abs().reindex(spent.index, fill_value=0.0)
    f = pd.DataFrame({
        "recency_days": (at - g["ts"].max()) / DAY,
        "frequency": g["day"].nunique().astype(float),
        "monetary": spent - returned,
        "tenure_days": (at - g["ts"].min()) / DAY,
    })
    f["avg_basket"] = f["monetary"] / f["frequency"].clip(lower=1)
    recent = buys[buys["ts"] >= at - horizon].groupby("user")
    f["spend_90d"] = recent["value"].sum().reindex(f.index, fill_value=0.0)
    f["frequency_90d"] = recent["day"].nunique().reindex(f.index, fill_value=0).astype(float)
    f["returns"] = rets.groupby("user").size().reindex(f.index, fill_value=0).astype(float)
    return f[MODEL_FEATURES].astype(float)


def rfm_scores(f: pd.DataFrame) -> pd.DataFrame:
    """Quintile scores 1-5 per customer (5 = most recent / most frequent / highest spend).

    A customer's score is ceil(5 * rank / n) with rank = 1 + the number of customers strictly below, so equal values
    share the lower score: one-purchase customers all get F=1 however many they are.
    """
    def q(s: pd.Series) -> pd.Series:
        r = s.rank(method="min", ascending=True)
        return np.ceil(r / len(s) * 5).clip(1, 5).astype(int)

    return pd.DataFrame({"r": q(-f["recency_days"]), "f": q(f["frequency"]), "m": q(f["monetary"])}, index=f.index)


def name_segment(r: int, f: int, m: int) -> str:
    """RFM scores -> segment; the first rule that matches wins:

    champions    R>=4, F>=4, M>=4   bought recently, often, and spend the most
    loyal        R>=3, F>=4         buy often, still active
    new          R>=4, F=1          first purchases, recently
    potential    R>=3               recent, not (yet) frequent
    at risk      R<=2, F>=3         used to buy often, not lately
    hibernating  R=2,  F<=2         few purchases, a while ago
    lost         R=1,  F<=2         few purchases, long ago
    """
    for name, v in (("r", r), ("f", f), ("m", m)):
        if not 1 <= v <= 5:
            raise ValueError(f"rfm.{name}: expected a score 1-5, got {v!r}")
    if r >= 4 and f >= 4 and m >= 4:
        return "champions"
    if r >= 3 and f >= 4:
        return "loyal"
    if r >= 4 and f == 1:
        return "new"
    if r >= 3:
        return "potential"
    if f >= 3:
        return "at risk"
    if r == 2:
        return "hibernating"
    return "lost"


def name_segments(rfm: pd.DataFrame) -> pd.Series:
    """`name_segment` of every row of `rfm_scores`, indexed like it."""
    return pd.Series([name_segment(*row) for row in rfm.itertuples(index=False)], index=rfm.index, dtype=object)


def segments_at(events: pd.DataFrame, at: float) -> pd.Series:
    """Each customer's RFM segment as of `at`, from events strictly before `at` only (nothing after it can leak in);
    customers without a purchase before `at`, and anonymous people, have none."""
    f = customer_features(events, at)
    return name_segments(rfm_scores(f)) if len(f) else pd.Series(dtype=object)
