"""Decision ids and the buffered decision log: every served answer is recorded for attribution and off-policy analysis.

Records are batched in memory and written to the store's offline-log stream (one pipelined round trip per batch), so
logging costs a request almost nothing. The buffer is bounded: when the store is down, the oldest records are dropped
and counted (an answer is never delayed or failed because its log record could not be written). Decisions that must
not be lost (offers, which reserve contact budget) are written synchronously by their own code path instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable

from features.schema import DecisionRecord
from features.store import FeatureStore, StoreUnavailable

log = logging.getLogger("recsvc.decisions")

FLUSH_EVERY_S = 0.2
FLUSH_AT = 256
BUFFER_CAP = 50_000


def new_decision_id() -> str:
    """Time-ordered and unique across workers: 12 hex digits of milliseconds, then 20 random hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def is_decision_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class DecisionLogger:
    """Collects DecisionRecords and flushes them in the background; `close()` flushes what is left."""

    def __init__(self, store_getter: Callable[[], FeatureStore | None], flush_every_s: float = FLUSH_EVERY_S,
                 flush_at: int = FLUSH_AT, cap: int = BUFFER_CAP) -> None:
        self._store = store_getter
        self._buf: deque[DecisionRecord] = deque()
        self.flush_every_s = flush_every_s
        self.flush_at = flush_at
        self.cap = cap
        self.written = 0
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False

    def log(self, rec: DecisionRecord) -> None:
        if len(self._buf) >= self.cap:
            self._buf.popleft()
            self.dropped += 1
        self._buf.append(rec)
        if len(self._buf) >= self.flush_at:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="decision-log")

    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_every_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        store = self._store()
        if store is None or not self._buf:
            return 0
        batch, self._buf = self._buf, deque()
        try:
            n = await store.log_decisions(list(batch))
        except StoreUnavailable as exc:
            log.warning("decision log: %d records wait for the store (%s)", len(batch), exc)
            batch.extend(self._buf)  # put them back in order, oldest first, within the cap
            while len(batch) > self.cap:
                batch.popleft()
                self.dropped += 1
            self._buf = batch
            return 0
        self.written += n
        return n

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=2.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        await self.flush()
        if self._buf:
            log.warning("decision log: %d records not written at shutdown", len(self._buf))

    @property
    def pending(self) -> int:
        return len(self._buf)

