"""The FeatureStore port: what the service, the importers and the offline-log drainer need from an online store.

Two adapters implement it: `redis_store.RedisFeatureStore` (production, tests) and `memory_store.MemoryFeatureStore`
(the embedded demo default). One contract test suite runs against both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

from features.clock import Clock
from features.schema import DecisionRecord, Event, IngestResult, Item, LinkRecord, LiveFeatures, LogRecord, Profile

Window = Literal["pop", "trend"]
# An offline-log entry as read from the stream: (entry id, record).
LogEntry = tuple[str, LogRecord | LinkRecord | DecisionRecord]


class StoreUnavailable(Exception):
    """The online store did not answer in time; the caller decides whether to degrade or refuse."""


@runtime_checkable
class FeatureStore(Protocol):
    backend: str  # "redis" or "memory"
    clock: Clock  # where "now" comes from when a call does not pass one

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

    async def ingest(self, events: Sequence[Event], now: float | None = None) -> IngestResult:
        """Store normalized events atomically per event: dedupe by event_id, resolve and link identities,
        update the person's live features and item popularity, append to the offline log. One round trip."""
        ...

    async def upsert_items(self, items: Sequence[Item]) -> int: ...

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, Item]: ...

    async def catalog_version(self) -> int:
        """A number that changes whenever the catalog does (0 before the first upsert)."""
        ...

    async def item_ids(self) -> list[str]:
        """Every catalog item id (from the catalog index set)."""
        ...

    async def resolve(self, any_id: str) -> str:
        """The canonical person id for a customer id or any linked alias value (itself when unknown)."""
        ...

    async def profile(self, any_id: str, now: float | None = None) -> Profile | None:
        """The live profile, affinities decayed to `now`; None when nothing is known. One round trip after resolve."""
        ...

    async def live(self, any_id: str, since: float, now: float | None = None) -> LiveFeatures | None:
        """What a decision needs of a person (see LiveFeatures), in one round trip; None when nothing is known.
        `since`: purchases at or after it come with their time (cool-downs)."""
        ...

    async def popular(
        self, scope: str = "all", window: Window = "pop", k: int = 100, now: float | None = None
    ) -> list[tuple[str, float]]:
        """Top items of a scope (`all`, `ch:<channel>`, `co:<country>`), best first, scores decayed to now."""
        ...

    async def set_traits(self, traits: Mapping[str, Mapping[str, str]]) -> int:
        """Publish offline results (segment, churn risk, value, consent) onto people: person -> {trait: value}."""
        ...

    async def erase(self, customer_id: str) -> bool:
        """Forget a person (privacy request): delete their keys and aliases, remember the id as erased."""
        ...

    async def erased_ids(self) -> set[str]: ...

    # ---- the offline log (a Redis Stream with a consumer group in production) ----

    async def log_decisions(self, records: Sequence[DecisionRecord]) -> int:
        """Append served decisions to the offline log (drained to decisions/date=.../*.parquet). One round trip."""
        ...

    async def log_read(self, group: str, consumer: str, count: int, block_ms: int = 0) -> list[LogEntry]:
        """New entries for this consumer (creates the group on first use)."""
        ...

    async def log_pending(self, group: str, consumer: str, count: int) -> list[LogEntry]:
        """Entries delivered to this consumer but not yet acknowledged (what a crash left behind)."""
        ...

    async def log_ack(self, group: str, entry_ids: Sequence[str]) -> int:
        """Acknowledge and delete drained entries, so the stream stays bounded."""
        ...

    async def log_length(self) -> int: ...
