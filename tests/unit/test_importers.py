"""Importers: the Online Retail conversion rules, categories, generic event files, idempotency."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.categories import categorize
from features.importers import ImportReport, import_events, import_online_retail, online_retail_rows
from features.memory_store import MemoryFeatureStore

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
    again = await import_events(store, path, progress=False)
    assert again.accepted == 2  # no event_id in the file: a re-import is new events; give ids to make it idempotent


async def test_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="path: unsupported"):
        await import_events(MemoryFeatureStore(), tmp_path / "x.xml", progress=False)
