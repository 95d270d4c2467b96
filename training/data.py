"""Training data from the offline log: interactions with type weights and time decay, the time split, fingerprints.

Anonymous history is re-attributed through the logged identity links; erased customers never appear: read_events
drops their own rows, and `load_interactions` drops, after attribution, every row of an alias ever linked to them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from features.categories import categorize
from features.keys import AFFINITY_WEIGHTS
from features.offline_log import (
    EVENT_SCHEMA,
    erased_closure,
    erased_ids,
    erased_mask,
    read_catalog,
    read_events,
    read_links,
)
from training.customers import customers_mask, segments_at
from training.models.base import TrainSet

DAY = 86400.0
DEFAULT_SPLIT = "2011-11-01"
DEFAULT_END = "2011-12-10"  # exclusive: the data ends 2011-12-09


def to_ts(day: str | float | datetime) -> float:
    """Epoch seconds (UTC) of a YYYY-MM-DD day, a datetime (naive = UTC) or a number."""
    if isinstance(day, (int, float)):
        return float(day)
    if isinstance(day, datetime):
        return (day if day.tzinfo else day.replace(tzinfo=timezone.utc)).timestamp()
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise ValueError(f"date {day!r}: expected YYYY-MM-DD") from None


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
    # one update over "id\n" for every sorted id: the same digest as an update per id, without a call per event
    h.update("".join(f"{eid}\n" for eid in sorted(df["event_id"].astype(str).tolist())).encode())
    return h.hexdigest()


REQUIRED = ("event_id", "type", "ts", "item_id")
TITLE_COLUMNS = ("title", "description", "Description")  # a "file" source may carry item titles beside the log


class DataError(ValueError):
    """The training data is unusable; the message names the file and the field."""


def _read_file(path: Path) -> pa.Table:
    if not path.is_file():
        raise DataError(f"--source {path}: no such file")
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix in (".csv", ".gz"):
        df = pd.read_csv(path, dtype={c: "string" for c in EVENT_SCHEMA.names if c not in ("ts", "quantity", "value")})
        return pa.Table.from_pandas(df, preserve_index=False)
    raise DataError(f"--source {path}: expected a .parquet or .csv file")


def _file_catalog(table: pa.Table) -> pd.DataFrame:
    """Titles from the file itself when it has a title/description column (development data); categories from them."""
    col = next((c for c in TITLE_COLUMNS if c in table.column_names), None)
    if col is None:
        return pd.DataFrame(columns=["item_id", "title", "categories", "price"])
    df = table.select(["item_id", col]).to_pandas().dropna().drop_duplicates("item_id", keep="last")
    return pd.DataFrame({"item_id": df["item_id"], "title": df[col].astype(str), "categories": None, "price": 0.0})


def resolve_links(links: pd.DataFrame) -> dict[str, str]:
    """alias -> the person its latest link points to, followed through chains (an alias linked to an anonymous person
    that was later merged into a customer ends at the customer); a cycle stops where it closes."""
    last = links.sort_values("ts", kind="stable").drop_duplicates("alias", keep="last")
    direct = dict(zip(last["alias"], last["person_id"]))
    out: dict[str, str] = {}
    for alias, person in direct.items():
        seen = {alias}
        while person in direct and person not in seen:
            seen.add(person)
            person = direct[person]
        out[alias] = person
    return out


def attribute(df: pd.DataFrame, links: pd.DataFrame) -> pd.Series:
    """The person each log row belongs to: its customer id, else its person id mapped through the identity links."""
    person = df["customer_id"].where(df["customer_id"].notna(), df["person_id"])
    if len(links):
        linked = person.map(resolve_links(links))
        person = linked.where(linked.notna(), person)
    return person


def erased_rows(table: pa.Table, person: pd.Series, erased: set[str], links: pd.DataFrame) -> np.ndarray:
    """Rows of an erased person (`person`: each row's link-attributed person, table.to_pandas() order): the rows
    features.offline_log.erased_mask drops for the erasure closure (their own ids, rows without a customer id that
    carry an alias ever tied to them, whoever it was last linked to), which off-policy evaluation drops too, and the
    history attributed to them through links."""
    gone = erased_closure(erased, zip(links["alias"], links["person_id"]) if len(links) else ())
    return erased_mask(table, gone, erased).to_numpy() | person.isin(gone).to_numpy(dtype=bool)


def load_interactions(
    source: str | Path | None = None,
    data_dir: str | Path | None = None,
    *,
    start: float | None = None,
    end: float | None = None,
) -> Dataset:
    """The offline log under `data_dir` (default RECSVC_DATA_DIR or var/data), or a Parquet/CSV file of log rows.

    Anonymous history is attributed to the person its alias was last linked to; erased customers (`erased.txt` under
    data_dir) are dropped with every alias ever linked to them. A file source gets data_dir's erasures and identity
    links too. The fingerprint covers the rows left after erasure.
    """
    data_dir = Path(data_dir if data_dir is not None else os.environ.get("RECSVC_DATA_DIR", "var/data"))
    erased = erased_ids(data_dir)
    if source is None or str(source) in ("", "log"):
        table = read_events(data_dir, start, end)
        catalog = read_catalog(data_dir).to_pandas()
        links = read_links(data_dir).to_pandas()
        name = f"log:{data_dir}"
    else:
        path = Path(source)
        raw = _read_file(path)
        missing = [c for c in REQUIRED if c not in raw.column_names]
        if missing:
            raise DataError(
                f"--source {path}: missing column(s) {', '.join(missing)} (expected the offline log's columns)"
            )
        if "customer_id" not in raw.column_names and "person_id" not in raw.column_names:
            raise DataError(f"--source {path}: needs a customer_id or person_id column")
        catalog = _file_catalog(raw)
        cols = {}
        for field in EVENT_SCHEMA:
            if field.name in raw.column_names:
                try:
                    cols[field.name] = raw[field.name].cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise DataError(f"--source {path}: column {field.name!r} is not {field.type} ({exc})") from exc
            else:
                cols[field.name] = pa.nulls(raw.num_rows, field.type)
        table = pa.table(cols, schema=EVENT_SCHEMA)
        if table.num_rows and table["ts"].null_count:
            raise DataError(f"--source {path}: column 'ts' has {table['ts'].null_count} empty value(s)")
        df0 = table.to_pandas().drop_duplicates("event_id", keep="first")
        if start is not None:
            df0 = df0[df0["ts"] >= start]
        if end is not None:
            df0 = df0[df0["ts"] < end]
        table = pa.Table.from_pandas(df0.sort_values(["ts", "event_id"]), schema=EVENT_SCHEMA, preserve_index=False)
        links = read_links(data_dir).to_pandas()  # the log's identity links apply to exported log rows too
        name = f"file:{path}"
    df = table.to_pandas()
    person = attribute(df, links)
    if erased:
        drop = erased_rows(table, person, erased, links)
        df, person = df[~drop], person[~drop]
    fp = fingerprint(df)
    keep = person.notna()
    df, person = df[keep], person[keep]
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
    ).reset_index(drop=True)
    if len(catalog) and "categories" in catalog:
        # catalog rows without categories get the keyword taxonomy's guess from the title
        catalog = catalog.copy()
        catalog["categories"] = [
            list(c) if c is not None and len(c) else categorize(str(t or ""))
            for c, t in zip(catalog["categories"], catalog["title"])
        ]
    return Dataset(events=events, catalog=catalog, fingerprint=fp, source=name)


def load_dataset(source: str | Path | None = None, data_dir: str | Path | None = None) -> Dataset:
    """The whole log (or file): `load_interactions` without a time range."""
    return load_interactions(source, data_dir)


def build_trainset(
    ds: Dataset,
    split_ts: float,
    *,
    half_life_days: float = 120.0,
    weights: dict[str, float] | None = None,
) -> TrainSet:
    """Interactions strictly before split_ts, as matrices indexed by explicit id maps.

    Each event weighs `weights[type]` (default features.keys.AFFINITY_WEIGHTS: purchase >> add_to_cart > view;
    returns negative) times 2^(-age / half_life_days) at the split; a (customer, item) total below zero is zero.
    Customer features: the last country seen before the split, and the RFM segment as of the split computed from
    events before it alone (training.customers.segments_at); anonymous people and customers without a purchase
    before the split have no segment.
    """
    if half_life_days <= 0:
        raise ValueError(f"half_life_days: must be positive, got {half_life_days}")
    weights = {**AFFINITY_WEIGHTS, **(weights or {})}
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise ValueError(f"event_weights.{name}: expected a number, got {w!r}")
    ev = ds.events[(ds.events["ts"] < split_ts) & ds.events["item_id"].notna()]
    # unique() before set(): iterating an Arrow string column value by value is what made this slow
    catalog_items = ds.catalog["item_id"].unique().tolist() if len(ds.catalog) else []
    item_ids = sorted(set(ev["item_id"].unique().tolist()) | set(catalog_items))
    user_ids = sorted(ev["user"].unique().tolist())
    rows = pd.Index(user_ids).get_indexer(ev["user"])
    cols = pd.Index(item_ids).get_indexer(ev["item_id"])
    types, type_names = pd.factorize(ev["type"])
    type_weight = np.array([float(weights.get(t, 0.0)) for t in type_names] + [0.0])  # [-1]: a missing type
    w_type = type_weight[types]
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
    segment = segments_at(ds.events, split_ts)
    title_of, cats_of, price_of = ({}, {}, {}) if not len(ds.catalog) else (
        dict(zip(ds.catalog["item_id"], ds.catalog[col])) if col in ds.catalog else {}
        for col in ("title", "categories", "price")
    )
    titles = [str(title_of[i]) if i in title_of else "" for i in item_ids]
    cats = [list(c) if (c := cats_of.get(i)) is not None else [] for i in item_ids]
    price = np.array([float(price_of[i] or 0.0) if i in price_of else 0.0 for i in item_ids], dtype=np.float32)
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
        user_segment=[segment.get(u) for u in user_ids],
    )


@dataclass
class TestSet:
    __test__ = False  # not a pytest class

    users: np.ndarray  # TrainSet user indices (customers with a purchase before the split)
    relevant: list[set[int]]  # item indices bought in the test window, per user


def build_testset(ds: Dataset, train: TrainSet, start_ts: float, end_ts: float) -> TestSet:
    """Purchases in [start, end) of customers with at least one purchase before the split."""
    ev = ds.events
    ev = ev[(ev["type"] == "purchase") & (ev["ts"] >= start_ts) & (ev["ts"] < end_ts)]
    u = pd.Index(train.user_ids).get_indexer(ev["user"])
    i = pd.Index(train.item_ids).get_indexer(ev["item_id"])
    bought_before = np.asarray(train.purchases.sum(axis=1)).ravel() > 0
    keep = (u >= 0) & (i >= 0) & customers_mask(ev["user"])
    keep[keep] = bought_before[u[keep]]
    pairs = np.unique(np.column_stack([u[keep], i[keep]]).astype(np.int64), axis=0)  # by user, then item
    users, starts = np.unique(pairs[:, 0], return_index=True)
    relevant = [set(items.tolist()) for items in np.split(pairs[:, 1], starts[1:])] if len(users) else []
    return TestSet(users=users.astype(np.int64), relevant=relevant)
