"""Where "now" comes from: the wall clock in production, or a replay clock that starts at a fixed instant.

A replay clock lets the demo serve historical data (Online Retail ends 2011-12-09) as if it were live: recency,
trending windows, sessions and decayed affinities are all read at the replayed time, which then advances in real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], float]


def wall_clock() -> float:
    return time.time()


def replay_clock(start: float) -> Clock:
    """A clock that reads `start` now and advances with the wall clock from here."""
    offset = start - time.time()
    return lambda: time.time() + offset


def parse_instant(text: str) -> float:
    """An ISO date or date-time (UTC unless it says otherwise) as epoch seconds; ValueError naming the format."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected an ISO date or date-time such as 2011-12-10 or 2011-12-10T09:00:00Z, got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
