"""Importers: the Online Retail conversion rules, categories, generic event files, idempotency."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.categories import categorize
from features.importers import ImportReport, UnreadableFile, import_events, import_online_retail, online_retail_rows
from features.memory_store import MemoryFeatureStore
from features.offline_log import read_catalog, read_events
from recsvc import cli

CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,2010-12-01 08:26:00,2.65,17850.0,United Kingdom
536366,22633,手工 马克杯 ☕ MUG,6,2010-12-01 08:28:00,1.85,,France
C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-1,2010-12-02 09:41:00,2.55,17850,United Kingdom
536380,POST,POSTAGE,1,2010-12-02 09:41:00,18.00,12583,France
536381,22139,FREE SAMPLE,10,2010-12-02 10:00:00,0,,United Kingdom
536382,22140,CUSHION COVER,-3,2010-12-02 10:00:00,1.0,,United Kingdom
536383,22141,BROKEN,2,not-a-date,1.0,12583,France
"""


@pytest.fixture
def retail_csv(tmp_path: Path) -> Path:
    path = tmp_path / "retail.csv.gz"
    path.write_bytes(gzip.compress(CSV.encode()))
    return path


def test_online_retail_conversion_rules(retail_csv: Path) -> None:
    report = ImportReport(source="t")
    items, events = online_retail_rows(retail_csv, report)
    assert report.rows == 8
    assert report.skipped == {
        "non-product stock code (postage, fees, manual, vouchers)": 1,
        "unit price <= 0 (no sale)": 1,
        "negative quantity outside a cancellation (stock adjustment)": 1,
        "malformed Quantity, UnitPrice or InvoiceDate": 1,
    }
    assert [e.event_id for e in events] == ["or-536365-85123A-1", "or-536365-85123A-2", "or-536366-22633-1", "or-C536379-85123A-1"]
    first, _, guest, ret = events
    assert (first.type, first.customer_id, first.quantity, first.value, first.country) == ("purchase", "17850", 6, 15.3, "United Kingdom")
    assert guest.customer_id is None and guest.anonymous_id == "guest-536366"
    assert (ret.type, ret.quantity, ret.value) == ("return", 1, 2.55)
    by_id = {i.item_id: i for i in items}
    assert by_id["85123A"].price == pytest.approx(2.55) and by_id["85123A"].categories[0] == "candles & lights"
    assert by_id["22633"].title == "手工 马克杯 ☕ MUG"


def test_category_rule_on_real_descriptions() -> None:
    assert categorize("WHITE HANGING HEART T-LIGHT HOLDER") == ["candles & lights", "candles & lights/holder"]
    assert categorize("PAPER CHAIN KIT 50'S CHRISTMAS ")[0] == "christmas"
    assert categorize("JUMBO BAG RED RETROSPOT")[0] == "bags"
    assert categorize("SET/6 RED SPOTTY PAPER CUPS")[0] == "kitchen & dining"
    assert categorize("ZZZ")[0] == "other"


async def test_import_twice_changes_nothing(retail_csv: Path) -> None:
    store = MemoryFeatureStore()
    first = await import_online_retail(store, retail_csv, progress=False)
    assert (first.events, first.accepted, first.duplicates, first.items) == (4, 4, 0, 2)
    before = await store.profile("17850", now=1.7e9)
    second = await import_online_retail(store, retail_csv, progress=False)
    assert (second.accepted, second.duplicates) == (0, 4)
    assert await store.profile("17850", now=1.7e9) == before
    assert before is not None and before.orders == 2 and before.counts["type:return"] == 1
    assert await store.log_length() == 4


ROWS = [
    {"type": "view", "channel": "app", "customer_id": "c1", "item_id": "A", "timestamp": "2024-05-01T10:00:00Z",
     "context.country": "DE", "properties": json.dumps({"q": "表"})},
    {"type": "purchase", "channel": "store", "customer_id": "c1", "item_id": "A", "quantity": "2", "value": "9.5",
     "timestamp": "2024-05-01T11:00:00+00:00", "country": "DE"},
    {"type": "teleport", "channel": "web", "customer_id": "c1"},
    {"type": "view", "channel": "web", "item_id": "A"},
]


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet"])
async def test_import_events_each_format_reports_bad_rows(tmp_path: Path, fmt: str) -> None:
    cols = sorted({k for r in ROWS for k in r})
    path = tmp_path / f"events.{fmt}"
    if fmt == "csv":
        path.write_text(",".join(cols) + "\n" + "\n".join(",".join(f'"{str(r.get(c, "")).replace(chr(34), chr(34) * 2)}"' for c in cols) for r in ROWS), encoding="utf-8")
    elif fmt == "ndjson":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS), encoding="utf-8")
    else:
        pq.write_table(pa.table({c: [None if r.get(c) is None else str(r[c]) for r in ROWS] for c in cols}), path)
    store = MemoryFeatureStore()
    report = await import_events(store, path, progress=False)
    assert (report.rows, report.accepted) == (4, 2)
    assert sum(report.skipped.values()) == 2
    assert any("row 3" in e and "type" in e for e in report.examples), report.examples
    assert any("row 4" in e and "identifier" in e for e in report.examples), report.examples
    p = await store.profile("c1")
    assert p is not None and p.country == "DE" and p.counts == {"type:view": 1, "type:purchase": 1, "channel:app": 1, "channel:store": 1}
    before = await store.profile("c1", now=1.72e9)
    again = await import_events(store, path, progress=False)
    assert (again.accepted, again.duplicates) == (0, 2)  # rows without event_id get one from their content
    assert await store.profile("c1", now=1.72e9) == before


async def test_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="path: unsupported"):
        await import_events(MemoryFeatureStore(), tmp_path / "x.xml", progress=False)



# ---- rows without event_id: content ids ----


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    """One file of rows in the format its name says (every cell as text, as a CSV would hold it)."""
    cols = sorted({k for r in rows for k in r})
    if path.suffix == ".csv":
        lines = [",".join(cols)] + [",".join('"' + str(r.get(c, "")).replace('"', '""') + '"' for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif path.suffix == ".ndjson":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.table({c: [None if r.get(c) is None else str(r[c]) for r in rows] for c in cols}), path)
    return path


async def test_rows_without_event_id_dedupe_across_files_and_formats(tmp_path: Path) -> None:
    row = {"type": "purchase", "channel": "web", "customer_id": "c9", "item_id": "杯子", "quantity": 2, "value": 3.5,
           "timestamp": "2024-05-01T12:00:00+02:00", "properties": json.dumps({"b": 1, "a": "x"})}
    same_elsewhere = {**row, "timestamp": "2024-05-01T10:00:00Z", "properties": json.dumps({"a": "x", "b": 1})}
    other = {**row, "quantity": 3}
    store = MemoryFeatureStore()
    first = await import_events(store, write_rows(tmp_path / "a.csv", [row, other]), progress=False)
    assert (first.accepted, first.duplicates) == (2, 0)
    for path in (write_rows(tmp_path / "b.ndjson", [same_elsewhere]), write_rows(tmp_path / "c.parquet", [row])):
        again = await import_events(store, path, progress=False)
        assert (again.accepted, again.duplicates) == (0, 1), path  # same content: same id, whatever the format
    ids = {r.event_id for _, r in await store.log_read("g", "w", 100) if hasattr(r, "event_id")}
    assert len(ids) == 2 and all(i.startswith("imp-") and len(i) == 36 for i in ids)
    p = await store.profile("c9")
    assert p is not None and p.orders == 2


# ---- bad lines and unreadable files ----


async def test_a_bad_ndjson_line_is_skipped_with_its_line_number(tmp_path: Path) -> None:
    good = {"type": "view", "channel": "web", "customer_id": "c1", "item_id": "A", "timestamp": "2024-05-01T10:00:00Z"}
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join([
        json.dumps(good).encode(),
        b"",  # blank lines are not rows
        b'{"type": "view", "channel": ',  # truncated JSON
        json.dumps({**good, "item_id": "B"}).encode(),
        b'{"type": "view", "channel": "web", "customer_id": "caf\xe9", "item_id": "A"}',  # latin-1, not UTF-8
        b"[1, 2]",
        json.dumps({**good, "item_id": "C"}).encode(),
    ]) + b"\n")
    store = MemoryFeatureStore()
    report = await import_events(store, path, progress=False)
    assert (report.rows, report.events, report.accepted) == (6, 3, 3)
    assert report.skipped == {"not valid JSON": 1, "not valid UTF-8": 1, "not a JSON object": 1}
    assert report.examples[0].startswith("row 2 (line 3): not valid JSON")
    assert report.examples[1] == "row 4 (line 5): not valid UTF-8 (byte 55 of the line)"
    assert report.examples[2] == "row 5 (line 6): not a JSON object (list)"
    p = await store.profile("c1")
    assert p is not None and [r.item_id for r in p.recent] == ["C", "B", "A"]


async def test_a_bad_csv_row_is_skipped_and_the_rest_imported(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(
        "\ufefftype,channel,customer_id,item_id,timestamp\n".encode()  # a byte-order mark is not part of the header
        + b"view,web,c1,A,2024-05-01T10:00:00Z\n"
        + b"view,web,caf\xe9,A,2024-05-01T10:00:00Z\n"  # one latin-1 byte
        + b'view,web,c1,"B\nwith a newline",2024-05-01T10:01:00Z\n'  # a quoted cell over two lines
        + b"view,web,c1,C,2024-05-01T10:02:00Z,surplus\n"
        + "view,web,顾客,D,2024-05-01T10:03:00Z\n".encode()
    ))
    store = MemoryFeatureStore()
    report = await import_events(store, path, progress=False)
    assert (report.rows, report.accepted) == (5, 2), report.examples
    assert report.examples[0] == "row 2 (line 3): not valid UTF-8 (column customer_id)"
    assert report.examples[1].startswith("row 3 (line 4): ") and "$.item_id" in report.examples[1]  # no newline in ids
    assert report.examples[2] == "row 4 (line 6): more cells than the header has columns (6 > 5)"
    assert await store.profile("顾客") is not None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("events.csv.gz", b"not gzip at all", "Not a gzipped file"),
        ("events.parquet", b"PAR1 not really", "cannot read"),
        ("events.csv", "type,channel\n".encode("utf-16"), "header: not valid UTF-8"),
        ("events.ndjson", b"\xff\xfe{\x00\n\xff\n", "no row could be read"),
    ],
)
async def test_a_file_that_cannot_be_read_at_all_is_an_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    store = MemoryFeatureStore()
    with pytest.raises(UnreadableFile, match=message):
        await import_events(store, path, progress=False)
    assert await store.log_length() == 0


def test_the_cli_exits_non_zero_for_an_unreadable_file(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(b"\x1f\x8b truncated")
    assert cli.main(["import", "events", str(path)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert not cli_env.exists()  # nothing drained


# ---- importing twice through the command changes nothing on disk ----


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """`recsvc` with the embedded store and a temporary offline log."""
    for var in ("RECSVC_REDIS_URL", "RECSVC_API_KEYS", "RECSVC_API_KEYS_FILE", "RECSVC_OPEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECSVC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECSVC_LOG_JSON", "false")
    return tmp_path / "data"


def snapshot(root: Path) -> dict[str, str]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_importing_twice_through_the_cli_writes_no_new_files(
    cli_env: Path, tmp_path: Path, retail_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_rows(tmp_path / "events.ndjson", [r for r in ROWS if r["type"] != "teleport"])
    assert cli.main(["import", "online-retail", str(retail_csv)]) == 0
    assert cli.main(["import", "events", str(events)]) == 0
    first = snapshot(cli_env)
    assert any(name.startswith("catalog/") for name in first) and sum(n.startswith("events/") for n in first) >= 2
    capsys.readouterr()
    assert cli.main(["import", "online-retail", str(retail_csv)]) == 0
    assert cli.main(["import", "events", str(events)]) == 0
    out = capsys.readouterr().out
    assert "(0 accepted, 4 already there)" in out and "(0 accepted, 2 already there)" in out
    assert snapshot(cli_env) == first  # same files, same bytes: the catalog snapshot kept the retail items too
    assert read_events(cli_env).num_rows == 6
    assert read_catalog(cli_env).num_rows == 2


async def test_online_retail_skips_a_row_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "retail.csv"
    path.write_bytes(CSV.encode() + b"536390,22142,CAF\xc9 MUG,1,2010-12-03 10:00:00,2.0,12583,France\n")
    store = MemoryFeatureStore()
    report = await import_online_retail(store, path, progress=False)
    assert report.rows == 9 and report.skipped["not valid UTF-8"] == 1 and "row 10: not valid UTF-8" in report.examples
    assert (report.events, report.accepted) == (4, 4)
