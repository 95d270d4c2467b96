"""The durable offline log: drains the store's stream into date-partitioned Parquet, and reads it back for training.

At least once from the stream, exactly once on disk: a batch's files get deterministic names from its entry ids and
are renamed into place before the batch is acknowledged, so re-draining after a crash rewrites the same files, and
readers dedupe by event_id whatever happened (a replay after the dedupe TTL, two drainers).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.schema import DECISION_COLUMNS, LOG_COLUMNS, DecisionRecord, Item, LinkRecord, LogRecord
from features.store import FeatureStore, LogEntry

_STRING_COLS = [c for c in LOG_COLUMNS if c not in ("ts", "quantity", "value", "ingested_at")]
EVENT_SCHEMA = pa.schema(
    [
        pa.field(c, pa.float64() if c in ("ts", "value", "ingested_at") else pa.int64() if c == "quantity" else pa.string())
        for c in LOG_COLUMNS
    ]
)
DECISION_SCHEMA = pa.schema(
    [
        pa.field(c, pa.float64() if c == "ts" else pa.bool_() if c == "degraded" else pa.string())
        for c in DECISION_COLUMNS
    ]
)
LINK_SCHEMA = pa.schema([("alias", pa.string()), ("person_id", pa.string()), ("ts", pa.float64())])
CATALOG_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("price", pa.float64()),
        ("available", pa.bool_()),
        ("attributes", pa.string()),
    ]
)
# Test hook: crash the drainer at a named point ("after_write", "mid_write") to prove nothing is lost or doubled.
CRASH_ENV = "RECSVC_DRAIN_CRASH_AT"


class DrainReport(msgspec.Struct):
    entries: int = 0
    events: int = 0
    links: int = 0
    decisions: int = 0
    files: int = 0
    pending_recovered: int = 0
    catalog_items: int = 0
    erased: int = 0

    def summary(self) -> str:
        return (
            f"drained {self.entries} stream entries: {self.events} events, {self.links} identity links, "
            f"{self.decisions} decisions into "
            f"{self.files} files ({self.pending_recovered} recovered from a previous crash); "
            f"catalog snapshot {self.catalog_items} items; {self.erased} erased ids"
        )


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def _safe(entry_id: str) -> str:
    return entry_id.replace("-", "_")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(table: pa.Table, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    if os.environ.get(CRASH_ENV) == "mid_write":
        os._exit(3)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _events_table(records: Sequence[LogRecord]) -> pa.Table:
    cols = {c: [getattr(r, c) for r in records] for c in LOG_COLUMNS}
    return pa.table(cols, schema=EVENT_SCHEMA)


def write_batch(data_dir: Path, entries: Sequence[LogEntry]) -> tuple[int, int, int, int]:
    """Write one batch of stream entries; returns (events, links, decisions, files). Deterministic names: safe to
    repeat."""
    by_date: dict[str, list[LogRecord]] = defaultdict(list)
    decisions: dict[str, list[DecisionRecord]] = defaultdict(list)
    links: list[LinkRecord] = []
    for _, rec in entries:
        if isinstance(rec, LogRecord):
            by_date[_date(rec.ts)].append(rec)
        elif isinstance(rec, DecisionRecord):
            decisions[_date(rec.ts)].append(rec)
        else:
            links.append(rec)
    name = f"part-{_safe(entries[0][0])}-{_safe(entries[-1][0])}.parquet"
    files = 0
    for date, recs in sorted(by_date.items()):
        _write_atomic(_events_table(recs), data_dir / "events" / f"date={date}" / name)
        files += 1
    if links:
        table = pa.table(
            {"alias": [x.alias for x in links], "person_id": [x.person_id for x in links], "ts": [x.ts for x in links]},
            schema=LINK_SCHEMA,
        )
        _write_atomic(table, data_dir / "links" / name)
        files += 1
    for date, recs in sorted(decisions.items()):
        table = pa.table({c: [getattr(r, c) for r in recs] for c in DECISION_COLUMNS}, schema=DECISION_SCHEMA)
        _write_atomic(table, data_dir / "decisions" / f"date={date}" / name)
        files += 1
    return sum(len(v) for v in by_date.values()), len(links), sum(len(v) for v in decisions.values()), files


async def drain(
    store: FeatureStore,
    data_dir: Path,
    *,
    group: str = "offline-log",
    consumer: str = "drainer-1",
    batch_size: int = 5000,
    block_ms: int = 1000,
    once: bool = True,
    progress: bool = False,
    stop: asyncio.Event | None = None,
) -> DrainReport:
    """Move the stream into Parquet. `once`: until the stream is empty; else until `stop` is set."""
    data_dir = Path(data_dir)
    report = DrainReport()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=await store.log_length(), unit="entry", desc="drain")

    async def handle(entries: list[LogEntry]) -> None:
        ev, ln, dec, files = await asyncio.to_thread(write_batch, data_dir, entries)
        if os.environ.get(CRASH_ENV) == "after_write":
            os._exit(3)
        await store.log_ack(group, [i for i, _ in entries])
        report.entries += len(entries)
        report.events += ev
        report.links += ln
        report.decisions += dec
        report.files += files
        if bar is not None:
            bar.update(len(entries))

    while True:  # what a previous run of this consumer read but never acknowledged
        pending = await store.log_pending(group, consumer, batch_size)
        if not pending:
            break
        report.pending_recovered += len(pending)
        await handle(pending)
    while True:
        entries = await store.log_read(group, consumer, batch_size, block_ms=0 if once else block_ms)
        if entries:
            await handle(entries)
            continue
        if once or (stop is not None and stop.is_set()):
            break
        if stop is not None:
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.01)
            except asyncio.TimeoutError:
                pass
    if bar is not None:
        bar.close()
    report.erased = await record_erasures(store, data_dir)
    if once:
        report.catalog_items = await snapshot_catalog(store, data_dir)
    return report


async def record_erasures(store: FeatureStore, data_dir: Path) -> int:
    """Append newly erased ids to erased.txt, which every reader of the log honours."""
    path = Path(data_dir) / "erased.txt"
    known = set(path.read_text(encoding="utf-8").split("\n")) if path.exists() else set()
    new = sorted((await store.erased_ids()) - known)
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in new))
            f.flush()
            os.fsync(f.fileno())
    return len(new)


async def snapshot_catalog(store: FeatureStore, data_dir: Path) -> int:
    ids = await store.item_ids()
    items: list[Item] = []
    for start in range(0, len(ids), 1000):
        got = await store.get_items(ids[start : start + 1000])
        items.extend(got[i] for i in ids[start : start + 1000] if i in got)
    table = pa.table(
        {
            "item_id": [i.item_id for i in items],
            "title": [i.title for i in items],
            "categories": [list(i.categories) for i in items],
            "price": [i.price for i in items],
            "available": [i.available for i in items],
            "attributes": [json.dumps(i.attributes, ensure_ascii=False) if i.attributes else None for i in items],
        },
        schema=CATALOG_SCHEMA,
    )
    _write_atomic(table, Path(data_dir) / "catalog" / "items.parquet")
    return len(items)


def _ts(x: datetime | float | None) -> float | None:
    if x is None or isinstance(x, (int, float)):
        return x
    return (x if x.tzinfo else x.replace(tzinfo=timezone.utc)).timestamp()


def erased_ids(data_dir: Path) -> set[str]:
    path = Path(data_dir) / "erased.txt"
    return {line for line in path.read_text(encoding="utf-8").split("\n") if line} if path.exists() else set()


ALIAS_COLUMNS = (("anonymous", "anonymous_id"), ("device", "device_id"), ("email", "email_hash"))


def erased_closure(erased: Iterable[str], links: Iterable[tuple[str, str]]) -> set[str]:
    """The erased ids and every alias ever linked to one of them (at any time, through any chain), plus the
    `kind:value` aliases of an erased raw value (`erase` accepts any id, as `resolve` does). `links`: (alias,
    person_id) pairs, as read_links has them. read_events and read_decisions drop only the erased ids' own rows:
    whoever reads the log for a person's history (training, off-policy evaluation) drops this closure too."""
    erased = set(erased)
    gone = set(erased)
    pairs = [(str(a), str(p)) for a, p in links]
    gone |= {a for a, _ in pairs if a.partition(":")[2] in erased}
    while True:
        more = {a for a, p in pairs if p in gone and a not in gone}
        if not more:
            return gone
        gone |= more


def link_pairs(links: pa.Table) -> list[tuple[str, str]]:
    """(alias, person_id) of a read_links table."""
    return list(zip(links["alias"].to_pylist(), links["person_id"].to_pylist()))


def erased_mask(table: pa.Table, gone: set[str], erased: set[str]) -> pa.ChunkedArray:
    """Rows (of read_events or read_decisions) that belong to an erased person, `gone` being erased_closure(...):
    a customer or person id in it, or, on a row without a customer id, an alias column whose `kind:value` is in it
    or whose value was erased as such."""
    cols = table.column_names
    gone_ids = pa.array(sorted(gone), type=pa.string())
    erased_ids_ = pa.array(sorted(erased), type=pa.string())

    def isin(values: Any, value_set: pa.Array) -> Any:
        return pc.fill_null(pc.is_in(values, value_set=value_set), False)

    mask = pa.chunked_array([pa.array(np.zeros(table.num_rows, dtype=bool))])
    for col in ("customer_id", "person_id"):
        if col in cols:
            mask = pc.or_(mask, isin(table[col], gone_ids))
    anonymous = pc.is_null(table["customer_id"]) if "customer_id" in cols else None
    for kind, col in ALIAS_COLUMNS:
        if col in cols:
            values = table[col].cast(pa.string())
            qualified = pc.binary_join_element_wise(pa.scalar(kind), values, ":")
            alias = pc.or_(isin(qualified, gone_ids), isin(values, erased_ids_))
            mask = pc.or_(mask, pc.and_(anonymous, alias) if anonymous is not None else alias)
    return mask


def without_erased(table: pa.Table, gone: set[str], erased: set[str]) -> pa.Table:
    """The rows of `table` that erased_mask keeps."""
    return table.filter(pc.invert(erased_mask(table, gone, erased))) if gone and table.num_rows else table


def read_events(
    data_dir: Path,
    start: datetime | float | None = None,
    end: datetime | float | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Every event once (dedupe by event_id, earliest ingest wins), erased people removed, sorted by ts.

    `start` inclusive, `end` exclusive; date partitions outside the range are not opened.
    """
    root = Path(data_dir) / "events"
    s, e = _ts(start), _ts(end)
    files: list[Path] = []
    if root.exists():
        for part in sorted(root.glob("date=*")):
            day = part.name[5:]
            if s is not None and day < _date(s):
                continue
            if e is not None and day > _date(e):
                continue
            files.extend(sorted(part.glob("part-*.parquet")))
    if not files:
        table = EVENT_SCHEMA.empty_table()
    else:
        table = pa.concat_tables([pq.read_table(f, schema=EVENT_SCHEMA) for f in files])
    if s is not None:
        table = table.filter(pc.greater_equal(table["ts"], s))
    if e is not None:
        table = table.filter(pc.less(table["ts"], e))
    if table.num_rows:
        table = table.sort_by([("event_id", "ascending"), ("ingested_at", "ascending")])
        ids = table["event_id"].to_numpy(zero_copy_only=False)
        keep = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]] if len(ids) else []
        table = table.take(pa.array(keep, type=pa.int64()))
        erased = erased_ids(data_dir)
        if erased:
            gone = pa.array(sorted(erased), type=pa.string())
            mask = pc.or_kleene(
                pc.fill_null(pc.is_in(table["customer_id"], gone), False),
                pc.fill_null(pc.is_in(table["person_id"], gone), False),
            )
            table = table.filter(pc.invert(mask))
        table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
    return table.select(list(columns)) if columns else table


def logged_event_ids(data_dir: Path) -> set[str]:
    """Every event_id on disk (erased people's included: their events were accepted too); reads one column."""
    root = Path(data_dir) / "events"
    files = sorted(root.glob("date=*/part-*.parquet")) if root.exists() else []
    return {i for f in files for i in pq.read_table(f, columns=["event_id"]).column(0).to_pylist()}


def read_links(data_dir: Path) -> pa.Table:
    files = sorted((Path(data_dir) / "links").glob("part-*.parquet"))
    if not files:
        return LINK_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=LINK_SCHEMA) for f in files]).sort_by("ts")


def read_decisions(
    data_dir: Path, start: datetime | float | None = None, end: datetime | float | None = None
) -> pa.Table:
    """Every logged decision once (dedupe by decision_id), erased people removed, sorted by ts; `start` inclusive,
    `end` exclusive."""
    root = Path(data_dir) / "decisions"
    s, e = _ts(start), _ts(end)
    files: list[Path] = []
    if root.exists():
        for part in sorted(root.glob("date=*")):
            day = part.name[5:]
            if (s is not None and day < _date(s)) or (e is not None and day > _date(e)):
                continue
            files.extend(sorted(part.glob("part-*.parquet")))
    if not files:
        return DECISION_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(f, schema=DECISION_SCHEMA) for f in files])
    if s is not None:
        table = table.filter(pc.greater_equal(table["ts"], s))
    if e is not None:
        table = table.filter(pc.less(table["ts"], e))
    if table.num_rows:
        table = table.sort_by([("decision_id", "ascending"), ("ts", "ascending")])
        ids = table["decision_id"].to_numpy(zero_copy_only=False)
        keep = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
        table = table.take(pa.array(keep, type=pa.int64())).sort_by([("ts", "ascending"), ("decision_id", "ascending")])
        erased = erased_ids(data_dir)
        if erased:
            gone = pa.array(sorted(erased), type=pa.string())
            mask = pc.or_kleene(
                pc.fill_null(pc.is_in(table["customer_id"], gone), False),
                pc.fill_null(pc.is_in(table["person_id"], gone), False),
            )
            table = table.filter(pc.invert(mask))
    return table


def read_catalog(data_dir: Path) -> pa.Table:
    path = Path(data_dir) / "catalog" / "items.parquet"
    return pq.read_table(path, schema=CATALOG_SCHEMA) if path.exists() else CATALOG_SCHEMA.empty_table()


def catalog_items(data_dir: Path) -> list[Item]:
    """The catalog snapshot as items (empty before the first drain)."""
    return [
        Item(item_id=r["item_id"], title=r["title"] or "", categories=list(r["categories"] or []), price=r["price"],
             available=r["available"] if r["available"] is not None else True,
             attributes=json.loads(r["attributes"]) if r["attributes"] else {})
        for r in read_catalog(data_dir).to_pylist()
    ]


def compact(data_dir: Path) -> int:
    """Rewrite each date partition as one deduplicated file; returns the number of partitions rewritten."""
    root = Path(data_dir) / "events"
    done = 0
    for part in sorted(root.glob("date=*")) if root.exists() else []:
        files = sorted(part.glob("part-*.parquet"))
        if len(files) <= 1:
            continue
        day = datetime.strptime(part.name[5:], "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
        table = read_events(data_dir, day, day + 86400)
        _write_atomic(table, part / f"part-compacted-{int(time.time() * 1000)}.parquet")
        for f in files:
            f.unlink()
        done += 1
    return done
