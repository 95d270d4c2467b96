"""Bulk imports into a FeatureStore: the Online Retail transactions, and any file of events in the documented columns.

Both are idempotent (deterministic event ids; the store counts a replay once) and report what they skipped and why.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from features.categories import categorize
from features.schema import MAX_BATCH, Event, EventContext, Item
from features.store import FeatureStore

PRODUCT_CODE = re.compile(r"^\d{5}")  # real products: five digits, optional letters (85123A); the rest are fees
MAX_REASONS = 20


class ImportReport(msgspec.Struct):
    source: str
    rows: int = 0
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    items: int = 0
    skipped: dict[str, int] = {}
    examples: list[str] = []  # the first few skipped rows, with row number and reason

    def skip(self, reason: str, row: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < MAX_REASONS:
            self.examples.append(f"row {row}: {reason}")

    def summary(self) -> str:
        lines = [
            f"{self.source}: {self.rows} rows -> {self.events} events ({self.accepted} accepted, "
            f"{self.duplicates} already there), {self.items} catalog items",
        ]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  skipped {n:>7} rows: {reason}")
        return "\n".join(lines)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8", newline="")  # type: ignore[return-value]


def online_retail_rows(path: Path, report: ImportReport) -> tuple[list[Item], list[Event]]:
    """Convert the Online Retail CSV: catalog items and purchase/return events (rules in docs/data.md)."""
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    events: list[Event] = []
    seen_in_invoice: Counter[tuple[str, str]] = Counter()
    with _open_text(Path(path)) as f:
        for n, row in enumerate(csv.DictReader(f), start=2):  # row 1 is the header
            report.rows += 1
            invoice, code = (row.get("InvoiceNo") or "").strip(), (row.get("StockCode") or "").strip()
            desc = (row.get("Description") or "").strip()
            if not PRODUCT_CODE.match(code):
                report.skip("non-product stock code (postage, fees, manual, vouchers)", n)
                continue
            try:
                qty = int(row["Quantity"])
                price = float(row["UnitPrice"])
                ts = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            except (KeyError, ValueError):
                report.skip("malformed Quantity, UnitPrice or InvoiceDate", n)
                continue
            cancelled = invoice.startswith("C")
            if qty == 0:
                report.skip("quantity 0", n)
                continue
            if qty < 0 and not cancelled:
                report.skip("negative quantity outside a cancellation (stock adjustment)", n)
                continue
            if price <= 0:
                report.skip("unit price <= 0 (no sale)", n)
                continue
            if desc:
                descriptions[code][desc] += 1
            prices[code].append(price)
            seen_in_invoice[(invoice, code)] += 1
            customer = (row.get("CustomerID") or "").strip()
            if customer:
                customer = str(int(float(customer)))
            events.append(
                Event(
                    type="return" if cancelled else "purchase",
                    channel="web",
                    event_id=f"or-{invoice}-{code}-{seen_in_invoice[(invoice, code)]}",
                    customer_id=customer or None,
                    anonymous_id=None if customer else f"guest-{invoice}",
                    timestamp=ts,
                    item_id=code,
                    quantity=abs(qty),
                    value=round(abs(qty) * price, 2),
                    context=EventContext(country=(row.get("Country") or "").strip() or None),
                    properties={"invoice": invoice},
                )
            )
    items = []
    for code, price_list in prices.items():
        title = descriptions[code].most_common(1)[0][0] if descriptions[code] else ""
        items.append(
            Item(
                item_id=code,
                title=title,
                categories=categorize(title) if title else ["other"],
                price=round(statistics.median(price_list), 2),
            )
        )
    events.sort(key=lambda e: (e.ts, e.event_id or ""))
    return items, events


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ev", disable=not enabled, mininterval=0.5)


async def _ingest(store: FeatureStore, events: list[Event], report: ImportReport, batch_size: int, progress: bool) -> None:
    batch_size = max(1, min(batch_size, MAX_BATCH))
    report.events += len(events)
    with _bar(len(events), "ingest", progress) as bar:
        for start in range(0, len(events), batch_size):
            chunk = events[start : start + batch_size]
            res = await store.ingest(chunk)
            report.accepted += res.accepted
            report.duplicates += res.duplicates
            bar.update(len(chunk))


async def import_online_retail(
    store: FeatureStore, path: Path, *, batch_size: int = 1000, progress: bool = True
) -> ImportReport:
    report = ImportReport(source=str(path))
    items, events = online_retail_rows(Path(path), report)
    for start in range(0, len(items), 1000):
        report.items += await store.upsert_items(items[start : start + 1000])
    await _ingest(store, events, report, batch_size, progress)
    return report


# ---- generic event files ----

_CONTEXT = set(EventContext.__struct_fields__)
_EVENT = set(Event.__struct_fields__)


def _row_to_event_dict(row: dict[str, Any]) -> dict[str, Any]:
    """Flat columns to the Event shape: `context.country` or bare `country` go into context; JSON text props parsed."""
    out: dict[str, Any] = {}
    ctx: dict[str, Any] = dict(row.get("context") or {}) if isinstance(row.get("context"), dict) else {}
    for key, value in row.items():
        if value is None or value == "" or key == "context":
            continue
        if key.startswith("context."):
            ctx[key[8:]] = value
        elif key in _CONTEXT and key not in _EVENT:
            ctx[key] = value
        elif key == "properties" and isinstance(value, str):
            out[key] = json.loads(value)
        else:
            out[key] = value
    if ctx:
        out["context"] = ctx
    return out


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            yield from batch.to_pylist()
    elif name.endswith((".ndjson", ".jsonl", ".json")):
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    elif name.endswith(".csv"):
        with _open_text(path) as f:
            yield from csv.DictReader(f)
    else:
        raise ValueError(f"path: unsupported file type {path.name!r} (use .csv, .parquet or .ndjson, optionally .gz)")


def parse_events(rows: Iterable[dict[str, Any]], report: ImportReport) -> list[Event]:
    events = []
    for n, row in enumerate(rows, start=1):
        report.rows += 1
        try:
            events.append(msgspec.convert(_row_to_event_dict(row), Event, strict=False))
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            report.skip(str(exc), n)
    return events


async def import_events(store: FeatureStore, path: Path, *, batch_size: int = 1000, progress: bool = True) -> ImportReport:
    report = ImportReport(source=str(path))
    try:
        events = parse_events(_rows(Path(path)), report)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.skip(f"unreadable file: {exc}", report.rows + 1)
        return report
    await _ingest(store, events, report, batch_size, progress)
    return report
