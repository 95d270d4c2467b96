"""Training data from the offline log: interactions with type weights and time decay, the time split, fingerprints.

Anonymous history is re-attributed through the logged identity links; erased customers never appear (read_events
drops them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from features.keys import AFFINITY_WEIGHTS
from features.offline_log import EVENT_SCHEMA, erased_ids, read_catalog, read_events, read_links
from training.models.base import TrainSet

DAY = 86400.0
DEFAULT_SPLIT = "2011-11-01"
DEFAULT_END = "2011-12-10"  # exclusive: the data ends 2011-12-09


def to_ts(day: str | float | datetime) -> float:
    if isinstance(day, (int, float)):
        return float(day)
    if isinstance(day, datetime):
        return (day if day.tzinfo else day.replace(tzinfo=timezone.utc)).timestamp()
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()


@dataclass
class Dataset:
    events: pd.DataFrame  # one row per event: user, item_id, type, ts, quantity, value, country
    catalog: pd.DataFrame  # item_id, title, categories, price
    fingerprint: str
    source: str


def fingerprint(table: pa.Table | pd.DataFrame) -> str:
    """sha256 over the sorted event ids, the row count and the time range: same data, same fingerprint."""
    df = table.to_pandas() if isinstance(table, pa.Table) else table
    h = hashlib.sha256()
    h.update(f"{len(df)}|{df['ts'].min() if len(df) else 0}|{df['ts'].max() if len(df) else 0}|".encode())
    for eid in sorted(df["event_id"].astype(str)):
        h.update(eid.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def load_dataset(source: str | Path | None = None, data_dir: str | Path = "var/data") -> Dataset:
    """The offline log under `data_dir` (default), or a Parquet/CSV file with the log's columns."""
    data_dir = Path(data_dir)
    if source is None or str(source) in ("", "log"):
        table = read_events(data_dir)
        catalog = read_catalog(data_dir).to_pandas()
        links = read_links(data_dir).to_pandas()
        name = f"log:{data_dir}"
    else:
        path = Path(source)
        table = pq.read_table(path) if path.suffix == ".parquet" else pa.Table.from_pandas(pd.read_csv(path))
        table = table.select([c for c in EVENT_SCHEMA.names if c in table.column_names])
        catalog = pd.DataFrame(columns=["item_id", "title", "categories", "price"])
        links = pd.DataFrame(columns=["alias", "person_id", "ts"])
        name = f"file:{path}"
        erased = erased_ids(data_dir)
        if erased:
            df0 = table.to_pandas()
            table = pa.Table.from_pandas(df0[~df0["customer_id"].isin(erased)], preserve_index=False)
    df = table.to_pandas()
    fp = fingerprint(df)
    person = df["customer_id"].where(df["customer_id"].notna(), df.get("person_id"))
    if len(links):
        last_link = links.sort_values("ts").drop_duplicates("alias", keep="last").set_index("alias")["person_id"]
        person = person.map(lambda p: last_link.get(p, p))
    events = pd.DataFrame(
        {
            "user": person.astype(str),
            "item_id": df["item_id"],
            "type": df["type"],
            "ts": df["ts"].astype(float),
            "quantity": df["quantity"].fillna(1).astype(float),
            "value": df["value"].fillna(0.0).astype(float),
            "country": df["country"],
            "event_id": df["event_id"],
        }
    )
    return Dataset(events=events, catalog=catalog, fingerprint=fp, source=name)


def is_customer(user: str) -> bool:
    """Anonymous people are `anonymous:…`, `device:…`, `email:…`; they train co-occurrence, not evaluation."""
    return not user.startswith(("anonymous:", "device:", "email:"))


def build_trainset(
    ds: Dataset,
    split_ts: float,
    *,
    half_life_days: float = 120.0,
    weights: dict[str, float] | None = None,
) -> TrainSet:
    """Interactions strictly before split_ts, as matrices indexed by explicit id maps."""
    weights = weights or AFFINITY_WEIGHTS
    ev = ds.events[(ds.events["ts"] < split_ts) & ds.events["item_id"].notna()]
    item_ids = sorted(set(ev["item_id"]) | set(ds.catalog["item_id"] if len(ds.catalog) else []))
    user_ids = sorted(set(ev["user"]))
    uidx = {u: i for i, u in enumerate(user_ids)}
    iidx = {it: i for i, it in enumerate(item_ids)}
    rows = ev["user"].map(uidx).to_numpy()
    cols = ev["item_id"].map(iidx).to_numpy()
    w_type = ev["type"].map(weights).fillna(0.0).to_numpy()
    decay = np.power(2.0, -(split_ts - ev["ts"].to_numpy()) / (half_life_days * DAY))
    shape = (len(user_ids), len(item_ids))
    weights_m = sp.csr_matrix((w_type * decay, (rows, cols)), shape=shape, dtype=np.float64)
    weights_m.sum_duplicates()
    weights_m.data = np.maximum(weights_m.data, 0.0)  # a return cancels interest, never becomes negative interest
    weights_m.eliminate_zeros()
    buy = (ev["type"] == "purchase").to_numpy()
    purchases = sp.csr_matrix((np.ones(buy.sum()), (rows[buy], cols[buy])), shape=shape, dtype=np.float32)
    purchases.sum_duplicates()
    last_ts = sp.csr_matrix((ev["ts"].to_numpy()[buy], (rows[buy], cols[buy])), shape=shape, dtype=np.float64)
    last_ts.sum_duplicates()  # summed; replace by the max below
    order = np.lexsort((ev["ts"].to_numpy()[buy], cols[buy], rows[buy]))
    r_b, c_b, t_b = rows[buy][order], cols[buy][order], ev["ts"].to_numpy()[buy][order]
    keep = np.r_[(r_b[1:] != r_b[:-1]) | (c_b[1:] != c_b[:-1]), True] if len(r_b) else np.zeros(0, bool)
    last_ts = sp.csr_matrix((t_b[keep], (r_b[keep], c_b[keep])), shape=shape, dtype=np.float64)
    country = ev.sort_values("ts").dropna(subset=["country"]).groupby("user")["country"].last()
    cat = ds.catalog.set_index("item_id") if len(ds.catalog) else pd.DataFrame(columns=["title", "categories", "price"])
    titles = [str(cat["title"].get(i, "")) if i in cat.index else "" for i in item_ids]
    cats = [list(cat["categories"].get(i)) if i in cat.index and cat["categories"].get(i) is not None else [] for i in item_ids]
    price = np.array([float(cat["price"].get(i) or 0.0) if i in cat.index else 0.0 for i in item_ids], dtype=np.float32)
    return TrainSet(
        user_ids=user_ids,
        item_ids=item_ids,
        weights=weights_m.astype(np.float32),
        purchases=purchases,
        last_ts=last_ts,
        split_ts=split_ts,
        user_country=[country.get(u) for u in user_ids],
        item_title=titles,
        item_categories=cats,
        item_price=price,
        user_segment=[None] * len(user_ids),
    )


@dataclass
class TestSet:
    users: np.ndarray  # TrainSet user indices (customers with a purchase before the split)
    relevant: list[set[int]]  # item indices bought in the test window, per user


def build_testset(ds: Dataset, train: TrainSet, start_ts: float, end_ts: float) -> TestSet:
    """Purchases in [start, end) of customers with at least one purchase before the split."""
    ev = ds.events
    ev = ev[(ev["type"] == "purchase") & (ev["ts"] >= start_ts) & (ev["ts"] < end_ts)]
    uidx = {u: i for i, u in enumerate(train.user_ids)}
    iidx = {it: i for i, it in enumerate(train.item_ids)}
    bought_before = np.asarray(train.purchases.sum(axis=1)).ravel() > 0
    rel: dict[int, set[int]] = {}
    for user, item in zip(ev["user"], ev["item_id"]):
        u, i = uidx.get(user), iidx.get(item)
        if u is None or i is None or not bought_before[u] or not is_customer(user):
            continue
        rel.setdefault(u, set()).add(i)
    users = np.array(sorted(rel), dtype=np.int64)
    return TestSet(users=users, relevant=[rel[u] for u in users])
