"""The popularity snapshots of the serving path: bounded however many scopes callers name, without a store read per
request for a scope already known to be empty, and never letting made-up scopes push out the ones answers use."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from features.memory_store import MemoryFeatureStore
from recsvc.serving import PopularSnapshots


class CountingStore(MemoryFeatureStore):
    """The in-process store, counting popularity reads; scopes in `hot` have one item, all others nothing."""

    def __init__(self, hot: Sequence[str]) -> None:
        super().__init__()
        self.hot = set(hot)
        self.reads: list[str] = []

    async def popular(self, scope: str = "all", window: str = "pop", k: int = 100,  # type: ignore[override]
                      now: float | None = None) -> list[tuple[str, float]]:
        self.reads.append(scope)
        return [(f"top-of-{scope}", 3.0)] if scope in self.hot else []


def test_made_up_countries_are_bounded_and_read_once() -> None:
    async def run() -> None:
        store = CountingStore(hot=["all", "co:GB"])
        snaps = PopularSnapshots(lambda: store, ttl_s=60, max_scopes=4, max_empty=8)
        assert await snaps.get("co:GB", "trend") == {"top-of-co:GB": 1.0}
        for n in range(1000):  # a caller naming a new country on every request
            assert await snaps.get(f"co:Nowhere{n}", "trend") == {}
        assert len(snaps) <= 4 + 8  # bounded, not 1001 entries
        assert snaps.cached("co:GB", "trend") == {"top-of-co:GB": 1.0}  # the real one was not pushed out
        reads = len(store.reads)
        for _ in range(50):  # the same unknown value again: remembered as empty, no store read
            assert await snaps.get("co:Nowhere999", "trend") == {}
            assert await snaps.get("co:GB", "trend")
        assert len(store.reads) == reads

    asyncio.run(run())


def test_snapshots_with_items_are_dropped_least_recently_used_first() -> None:
    async def run() -> None:
        scopes = [f"co:C{n}" for n in range(6)]
        store = CountingStore(hot=scopes)
        snaps = PopularSnapshots(lambda: store, ttl_s=60, max_scopes=3, max_empty=2)
        for scope in scopes[:3]:
            await snaps.get(scope, "trend")
        await snaps.get("co:C0", "trend")  # used again: now the most recent
        await snaps.get("co:C3", "trend")  # one too many: C1, the least recently used, goes
        assert [s for s in scopes if snaps.cached(s, "trend")] == ["co:C0", "co:C2", "co:C3"]
        assert len(snaps) == 3
        reads = len(store.reads)
        await snaps.get("co:C1", "trend")  # dropped, so read again
        assert len(store.reads) == reads + 1 and snaps.cached("co:C1", "trend")

    asyncio.run(run())


def test_an_empty_scope_is_asked_again_after_the_ttl() -> None:
    async def run() -> None:
        store = CountingStore(hot=[])
        snaps = PopularSnapshots(lambda: store, ttl_s=0.0)
        await snaps.get("co:FR", "trend")
        store.hot.add("co:FR")  # the first purchase in France
        await asyncio.sleep(0.01)
        assert await snaps.get("co:FR", "trend") == {"top-of-co:FR": 1.0}
        assert store.reads == ["co:FR", "co:FR"]

    asyncio.run(run())


class SlowStore(CountingStore):
    async def popular(self, scope: str = "all", window: str = "pop", k: int = 100,  # type: ignore[override]
                      now: float | None = None) -> list[tuple[str, float]]:
        await asyncio.sleep(0.01)  # a read in flight while more requests for the scope arrive
        return await super().popular(scope, window, k, now)


def test_a_burst_of_requests_for_an_unread_scope_reads_it_once() -> None:
    async def run() -> None:
        store = SlowStore(hot=["co:GB"])
        snaps = PopularSnapshots(lambda: store, ttl_s=60)
        got = await asyncio.gather(*[snaps.get(s, "trend") for s in ["co:GB"] * 32 + ["co:FR"] * 32])
        assert got[:32] == [{"top-of-co:GB": 1.0}] * 32 and got[32:] == [{}] * 32
        assert sorted(store.reads) == ["co:FR", "co:GB"]  # one read each, not 32

    asyncio.run(run())
