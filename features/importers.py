"""Bulk imports into a FeatureStore: the Online Retail transactions, and any file of events in the documented columns.

Both are idempotent (deterministic event ids; the store counts a replay once) and report what they skipped and why.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import re
import statistics
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pyarrow as pa

from features.categories import categorize
from features.schema import MAX_BATCH, Event, EventContext, Item
from features.store import FeatureStore

PRODUCT_CODE = re.compile(r"^\d{5}")  # real products: five digits, optional letters (85123A); the rest are fees
MAX_REASONS = 20


class UnreadableFile(ValueError):
    """The file as a whole cannot be read (missing, not gzip, not Parquet, not one readable line): nothing imported."""


class ImportReport(msgspec.Struct):
    source: str
    rows: int = 0
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    items: int = 0
    skipped: dict[str, int] = {}
    examples: list[str] = []  # the first few skipped rows, with row (and line) number and reason
    unreadable: int = 0  # rows skipped before validation: not UTF-8, not JSON, not CSV

    def skip(self, reason: str, row: int, line: int | None = None, detail: str = "") -> None:
        """Count a skipped row under `reason`; the first few are listed with their row, line and `detail`."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < MAX_REASONS:
            where = f"row {row}" if line is None else f"row {row} (line {line})"
            self.examples.append(f"{where}: {reason}{f' ({detail})' if detail else ''}")

    def summary(self) -> str:
        lines = [
            f"{self.source}: {self.rows} rows -> {self.events} events ({self.accepted} accepted, "
            f"{self.duplicates} already there), {self.items} catalog items",
        ]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  skipped {n:>7} rows: {reason}")
        return "\n".join(lines)


_BAD_BYTE = re.compile("[\udc80-\udcff]")
# Text is decoded with this error handler: surrogateescape (each invalid byte becomes a lone surrogate U+DC80..U+DCFF,
# so one bad row is skipped, not the file), counting what it escapes, so that a clean file never pays for checking its
# rows: readers check rows only once the count moved.
_ESCAPE = "recsvc-count-surrogateescape"
_escaped = 0
_surrogateescape = codecs.lookup_error("surrogateescape")


def _count_and_escape(exc: UnicodeError) -> tuple[str, int]:
    global _escaped
    _escaped += 1
    return _surrogateescape(exc)  # type: ignore[no-any-return]


codecs.register_error(_ESCAPE, _count_and_escape)


def _has_bad_bytes(text: str) -> bool:
    return not text.isascii() and _BAD_BYTE.search(text) is not None


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        raw = gzip.open(path, "rb")
        return io.TextIOWrapper(raw, encoding="utf-8", errors=_ESCAPE, newline="")  # type: ignore[return-value,arg-type]
    return open(path, encoding="utf-8", errors=_ESCAPE, newline="")  # type: ignore[return-value]


def online_retail_rows(path: Path, report: ImportReport) -> tuple[list[Item], list[Event]]:
    """Convert the Online Retail CSV: catalog items and purchase/return events (rules in docs/data.md)."""
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    events: list[Event] = []
    seen_in_invoice: Counter[tuple[str, str]] = Counter()
    escaped = _escaped
    with _open_text(Path(path)) as f:
        for n, row in enumerate(csv.DictReader(f), start=2):  # row 1 is the header
            report.rows += 1
            if _escaped != escaped and any(isinstance(v, str) and _has_bad_bytes(v) for v in row.values()):
                report.skip("not valid UTF-8", n)
                continue
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
    try:
        items, events = online_retail_rows(Path(path), report)
    except _UNREADABLE as exc:
        raise UnreadableFile(f"path: cannot read {path}: {exc}") from None
    for start in range(0, len(items), 1000):
        report.items += await store.upsert_items(items[start : start + 1000])
    await _ingest(store, events, report, batch_size, progress)
    return report


# ---- generic event files ----

_CONTEXT = set(EventContext.__struct_fields__)
_EVENT = set(Event.__struct_fields__)
IMPORT_ID_PREFIX = "imp-"
_canonical = msgspec.json.Encoder(order="sorted")


def content_event_id(event: Event) -> str:
    """The event_id of a row that has none: a hash of its validated content, so the same row imports once.

    The content is the Event as validated (numbers parsed, empty cells absent), without event_id, with the timestamp
    as UTC epoch seconds and keys sorted: the same row in CSV, NDJSON or Parquet, with any time-zone offset, in this
    file or another, gets the same id. A row without timestamp hashes without it (it gets the import time)."""
    data = msgspec.to_builtins(event)
    data.pop("event_id", None)
    if event.timestamp is not None:
        data["timestamp"] = event.ts
    return IMPORT_ID_PREFIX + hashlib.sha256(_canonical.encode(data)).hexdigest()[:32]


def _row_to_event_dict(row: dict[str, Any]) -> dict[str, Any]:
    """Flat columns to the Event shape: `context.country` or bare `country` go into context; JSON text props parsed."""
    out: dict[str, Any] = {}
    ctx: dict[str, Any] = dict(row["context"]) if isinstance(row.get("context"), dict) else {}
    for key, value in row.items():
        if value is None or value == "":
            continue
        if key == "context":
            if not isinstance(value, dict):
                out[key] = value  # let validation name it
        elif key.startswith("context."):
            ctx[key[8:]] = value
        elif key in _CONTEXT and key not in _EVENT:
            ctx[key] = value
        elif key == "properties" and isinstance(value, str):
            try:
                out[key] = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"properties: not JSON text ({exc})") from None
        else:
            out[key] = value
    if ctx:
        out["context"] = ctx
    return out


class Unread(NamedTuple):
    """Why a line or record never became a row: a reason to count and a detail for the example."""

    reason: str
    detail: str = ""


# A row as read from a file: (row number, line number or None, the row or why it could not be read).
RawRow = tuple[int, int | None, "dict[str, Any] | Unread"]


def _ndjson_rows(f: io.BufferedIOBase) -> Iterator[RawRow]:
    row = 0
    for line_no, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        row += 1
        try:
            line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a byte-order mark may open the file
        except UnicodeDecodeError as exc:
            yield row, line_no, Unread("not valid UTF-8", f"byte {exc.start + 1} of the line")
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            yield row, line_no, Unread("not valid JSON", str(exc))
            continue
        yield row, line_no, value if isinstance(value, dict) else Unread("not a JSON object", type(value).__name__)


def _csv_rows(f: io.BufferedIOBase) -> Iterator[RawRow]:
    escaped = _escaped
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors=_ESCAPE, newline="")  # type: ignore[arg-type]
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        return
    if _escaped != escaped and any(_has_bad_bytes(h) for h in header):
        raise UnreadableFile("header: not valid UTF-8")
    row = 0
    while True:
        line_no = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row += 1
            yield row, line_no, Unread("not valid CSV", str(exc))
            if reader.line_num < line_no:  # nothing consumed: the reader cannot go on
                return
            continue
        if not values:  # a blank line
            continue
        row += 1
        bad = next((i for i, v in enumerate(values) if _has_bad_bytes(v)), None) if _escaped != escaped else None
        if bad is not None:
            yield row, line_no, Unread("not valid UTF-8", f"column {header[bad] if bad < len(header) else bad + 1}")
        elif len(values) > len(header):
            yield row, line_no, Unread("more cells than the header has columns", f"{len(values)} > {len(header)}")
        else:
            yield row, line_no, dict(zip(header, values))


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for value in batch.to_pylist():
            row += 1
            yield row, None, value


def _rows(path: Path) -> Iterator[RawRow]:
    """Every row of the file, numbered; a line that cannot be read is yielded as the reason, not raised."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    if name.endswith((".ndjson", ".jsonl", ".json")):
        read = _ndjson_rows
    elif name.endswith(".csv"):
        read = _csv_rows
    else:
        raise ValueError(f"path: unsupported file type {path.name!r} (use .csv, .parquet or .ndjson, optionally .gz)")
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        yield from read(f)  # type: ignore[arg-type]


def parse_events(rows: Iterable[RawRow], report: ImportReport) -> list[Event]:
    """Validate each row like an API event; a row without event_id gets `content_event_id`. Bad rows are counted in
    the report with their row (and line) number and reason."""
    events = []
    for n, line, row in rows:
        report.rows += 1
        if isinstance(row, Unread):
            report.unreadable += 1
            report.skip(row.reason, n, line, row.detail)
            continue
        try:
            event = msgspec.convert(_row_to_event_dict(row), Event, strict=False)
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            report.skip(str(exc), n, line)
            continue
        if event.event_id is None:
            event.event_id = content_event_id(event)
        events.append(event)
    return events


# gzip.BadGzipFile is an OSError; pyarrow raises ArrowInvalid for a file that is not Parquet
_UNREADABLE = (OSError, EOFError, zlib.error, pa.ArrowException, UnreadableFile)


def read_event_file(path: Path, report: ImportReport) -> list[Event]:
    """Parse a whole file before anything is stored. UnreadableFile when it cannot be read at all: an I/O error, a
    broken gzip or Parquet file, or not one row readable (every line not UTF-8 or not a JSON object)."""
    try:
        events = parse_events(_rows(Path(path)), report)
    except _UNREADABLE as exc:
        raise UnreadableFile(f"path: cannot read {path}: {exc}") from None
    if report.rows and report.unreadable == report.rows:
        raise UnreadableFile(f"path: cannot read {path}: no row could be read ({report.examples[0]})")
    return events


async def import_events(store: FeatureStore, path: Path, *, batch_size: int = 1000, progress: bool = True) -> ImportReport:
    """Import a CSV, Parquet or NDJSON file of events (columns in docs/data.md). Raises UnreadableFile (a ValueError)
    when the file cannot be read at all; otherwise bad rows are skipped and reported, the others ingested."""
    report = ImportReport(source=str(path))
    events = read_event_file(Path(path), report)
    await _ingest(store, events, report, batch_size, progress)
    return report
