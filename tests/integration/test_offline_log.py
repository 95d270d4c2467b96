"""The offline log against a real Redis: every accepted event lands in Parquet exactly once, crashes included."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.memory_store import MemoryFeatureStore
from features.offline_log import (
    CRASH_ENV,
    drain,
    read_catalog,
    read_decisions,
    read_events,
    read_links,
    compact,
    write_batch,
)
from features.redis_store import RedisFeatureStore
from features.schema import DecisionRecord, Event, Item

DAY = 86400.0
T0 = datetime(2011, 3, 1, 10, tzinfo=timezone.utc).timestamp()


def events(n: int, start: int = 0, customer: str = "c") -> list[Event]:
    return [
        Event(
            type="purchase",
            channel="web",
            customer_id=f"{customer}{i % 50}",
            item_id=f"I{i % 97}",
            event_id=f"e{i}",
            timestamp=datetime.fromtimestamp(T0 + (i % 5) * DAY + i, tz=timezone.utc),
        )
        for i in range(start, start + n)
    ]


async def test_drain_writes_every_event_once_partitioned_by_date(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=5)
    await store.upsert_items([Item(item_id="I1", title="杯子 ☕", categories=["kitchen"])])
    for b in range(0, 1000, 100):
        await store.ingest(events(100, b))
    await store.ingest([Event(type="view", channel="web", customer_id="c1", anonymous_id="ck", item_id="I1")])
    report = await drain(store, tmp_path, batch_size=300)
    assert report.events == 1001 and report.links == 1 and report.entries == 1002
    assert await store.log_length() == 0
    days = sorted(p.name for p in (tmp_path / "events").glob("date=*"))
    assert days[:5] == [f"date=2011-03-0{d}" for d in range(1, 6)]
    table = read_events(tmp_path)
    assert table.num_rows == 1001 and len(set(table["event_id"].to_pylist())) == 1001
    assert table["ts"].to_pylist() == sorted(table["ts"].to_pylist())
    assert read_links(tmp_path).to_pylist()[0]["alias"] == "anonymous:ck"
    assert read_catalog(tmp_path).to_pylist()[0]["title"] == "杯子 ☕"
    # a second drain finds nothing and writes nothing
    again = await drain(store, tmp_path)
    assert again.entries == 0
    # range reads prune partitions
    assert read_events(tmp_path, T0 + DAY, T0 + 2 * DAY).num_rows == 200
    await store.close()


DRAIN_SCRIPT = """
import asyncio, sys
from pathlib import Path
from features.redis_store import RedisFeatureStore
from features.offline_log import drain
async def main():
    s = RedisFeatureStore.from_url(sys.argv[1], prefix=sys.argv[2], timeout_s=5)
    r = await drain(s, Path(sys.argv[3]), batch_size=int(sys.argv[4]))
    print(r.entries, r.pending_recovered)
    await s.close()
asyncio.run(main())
"""


@pytest.mark.parametrize("crash_at", ["after_write", "mid_write"])
async def test_killed_drainer_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, redis_url: str, redis_prefix: str, crash_at: str
) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=5)
    for b in range(0, 20_000, 1000):
        await store.ingest(events(1000, b))
    args = [sys.executable, "-c", DRAIN_SCRIPT, redis_url, redis_prefix, str(tmp_path), "3000"]
    crashed = subprocess.run(args, env={**os.environ, CRASH_ENV: crash_at}, capture_output=True, text=True)
    assert crashed.returncode == 3, crashed.stderr  # died inside the first batch, before acknowledging it
    assert await store.log_length() == 20_000
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    entries, recovered = map(int, done.stdout.split())
    assert recovered == 3000 and entries == 20_000
    assert await store.log_length() == 0
    table = read_events(tmp_path)
    assert table.num_rows == 20_000
    # exactly once on disk, not only after read-side dedupe
    on_disk = sum(pq.read_metadata(f).num_rows for f in (tmp_path / "events").rglob("part-*.parquet"))
    assert on_disk == 20_000
    assert not list((tmp_path / "events").rglob(".*.tmp")) or crash_at == "mid_write"
    await store.close()


async def test_readers_dedupe_across_files_and_drop_erased(tmp_path: Path) -> None:
    store = MemoryFeatureStore()
    await store.ingest(events(10))
    await drain(store, tmp_path)
    # the same events again, as after a replay past the dedupe TTL: a new store accepts them again
    store2 = MemoryFeatureStore()
    await store2.ingest(events(10))
    await store2.erase("c3")
    await drain(store2, tmp_path)
    table = read_events(tmp_path)
    assert table.num_rows == 9  # ten distinct events, one of them erased customer c3's
    assert "c3" not in table["customer_id"].to_pylist()
    assert compact(tmp_path) >= 1
    assert read_events(tmp_path).num_rows == 9
    assert sum(1 for _ in (tmp_path / "events").rglob("part-*.parquet")) == len(list((tmp_path / "events").glob("date=*")))


def test_empty_log_reads_as_an_empty_table(tmp_path: Path) -> None:
    t = read_events(tmp_path)
    assert t.num_rows == 0 and "event_id" in t.column_names
    assert read_catalog(tmp_path).num_rows == 0


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    batch=st.integers(1, 25),
    crashes=st.lists(st.integers(0, 10), max_size=4),
)
def test_any_crash_sequence_keeps_every_event_exactly_once(tmp_path_factory: pytest.TempPathFactory, n: int, batch: int, crashes: list[int]) -> None:
    """Model a drainer that dies after writing batch k (before its ack), any number of times, then finishes."""
    data_dir = tmp_path_factory.mktemp("log")

    async def run() -> None:
        store = MemoryFeatureStore()
        await store.ingest(events(n), now=time.time())
        for k in crashes:
            pending = await store.log_pending("g", "d", batch)
            todo = pending or await store.log_read("g", "d", batch)
            for _ in range(k):
                if not todo:
                    break
                write_batch(data_dir, todo)
                await store.log_ack("g", [i for i, _ in todo])
                todo = await store.log_read("g", "d", batch)
            if todo:
                write_batch(data_dir, todo)  # written, then the crash: never acknowledged
        await drain(store, data_dir, group="g", consumer="d", batch_size=batch)
        assert await store.log_length() == 0

    asyncio.run(run())
    on_disk = [r for f in (data_dir / "events").rglob("part-*.parquet") for r in pq.read_table(f)["event_id"].to_pylist()]
    assert sorted(on_disk) == sorted(f"e{i}" for i in range(n))


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_decisions_drain_to_their_own_dataset_once(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "redis":
        store = RedisFeatureStore.from_url(request.getfixturevalue("redis_url"),
                                           prefix=request.getfixturevalue("redis_prefix"), timeout_s=5)
    else:
        store = MemoryFeatureStore()  # type: ignore[assignment]
    recs = [DecisionRecord(decision_id=f"d{i}", ts=T0 + i * DAY / 2, surface="offers", channel="email",
                           person_id=f"p{i % 3}", customer_id=f"p{i % 3}", model="recsvc-propensity@2",
                           policy="greedy", entries='[{"id": "o1", "score": 0.5, "p": 0.9}]') for i in range(6)]
    assert await store.log_decisions(recs) == 6
    await store.log_decisions(recs[:2])  # a retried write: read back once
    await store.ingest(events(3))
    report = await drain(store, tmp_path)
    assert report.decisions == 8 and report.events == 3
    table = read_decisions(tmp_path)
    assert table["decision_id"].to_pylist() == [f"d{i}" for i in range(6)]
    assert table["entries"][0].as_py() == '[{"id": "o1", "score": 0.5, "p": 0.9}]'
    assert read_decisions(tmp_path, T0 + DAY, T0 + 2 * DAY)["decision_id"].to_pylist() == ["d2", "d3"]
    (tmp_path / "erased.txt").write_text("p1\n", encoding="utf-8")
    assert "d1" not in read_decisions(tmp_path)["decision_id"].to_pylist()
    await store.close()
