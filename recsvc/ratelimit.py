"""Per-key rate limits, counted in Redis so every worker and replica shares one budget per key.

Algorithm: a sliding one-minute window approximated by two fixed windows (the current and the previous minute):
    estimate = previous * (1 - elapsed / 60) + current
A request is allowed when estimate + 1 <= limit, and only allowed requests are counted (a client hammering at twice
its limit still gets its limit through). Keys: `P:rl:{key_id}:{minute}` (a string counter per key and minute since
the epoch, TTL 121 s, so at most two live keys per active API key). A check is a tiny Lua script (two GETs, INCRBY,
EXPIRE on the first count) run with EVALSHA. A key with a large budget (limit >= 2 * BLOCK_DIVISOR per minute)
reserves a block of limit / BLOCK_DIVISOR requests (at most BLOCK_MAX) in one call while the block fits under the
limit, and this process spends it without asking again in the same window: one round trip per block instead of per
request. What a process reserved and did not spend before its window ended stays counted: at most a block per
process, a thousandth of the limit. Near the limit, blocks do not fit and every request is checked alone. The
embedded in-process store gets an in-process limiter with the same arithmetic.

The limiter fails open: when Redis errors or overruns its timeout the request proceeds, the fail-open counter
(`recsvc_ratelimit_fail_open_total`) moves, and checks pause for FAIL_OPEN_BACKOFF_S so an outage adds no timeout
to every request. A limit of 0 means unlimited and costs nothing; open access (the demo) is not limited.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping

from prometheus_client import Counter

from features.redis_store import RedisFeatureStore
from features.store import FeatureStore, StoreUnavailable
from recsvc.errors import RateLimited
from recsvc.metrics import REGISTRY
from recsvc.security import ConfigError, Principal

log = logging.getLogger("recsvc.ratelimit")

WINDOW_S = 60
KEY_TTL_S = 2 * WINDOW_S + 1  # a window's counter is still read as "previous" during the next one
FAIL_OPEN_BACKOFF_S = 1.0
OPEN_KEY_ID = "open"  # security.OPEN_PRINCIPAL: the demo without keys

RATE_LIMIT_FAIL_OPEN = Counter("recsvc_ratelimit_fail_open_total",
                               "Requests let through unchecked because the rate-limit store failed or was backing off",
                               ["reason"], registry=REGISTRY)
RATE_LIMITED = Counter("recsvc_ratelimited_total", "Requests refused with 429 by the per-key rate limit", ["scope"],
                       registry=REGISTRY)
_FAIL_ERROR = RATE_LIMIT_FAIL_OPEN.labels("error")
_FAIL_BACKOFF = RATE_LIMIT_FAIL_OPEN.labels("backoff")

BLOCK_DIVISOR = 1000  # a block is this fraction of the limit ...
BLOCK_MAX = 100  # ... and at most this many requests

# KEYS: current window, previous window. ARGV: limit, weight of the previous window, TTL, block (requests to reserve
# when they fit, else one). Returns {granted, cur, prev}: granted 0 when refused; cur the count after this
# reservation when granted, before it when refused.
LUA = """
local limit = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local base = prev * tonumber(ARGV[2]) + cur
local take = tonumber(ARGV[4] or '1')
if base + take > limit then take = 1 end
if base + take > limit then
  return {0, cur, prev}
end
cur = redis.call('INCRBY', KEYS[1], take)
if cur == take then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
return {take, cur, prev}
"""

_KEY_ID = re.compile(r"^[0-9a-f]{12}$")


def parse_overrides(spec: str) -> dict[str, int]:
    """RECSVC_RATE_LIMITS: "keyid=N,keyid=N" with keyid the 12-hex key id (first 12 hex digits of the key's SHA-256,
    `printf %s "$KEY" | sha256sum | cut -c1-12`) and N requests per minute (0: unlimited)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key_id, sep, n = part.partition("=")
        key_id = key_id.strip().lower()
        if not sep or not _KEY_ID.match(key_id):
            raise ConfigError("RECSVC_RATE_LIMITS: expected keyid=N with keyid the first 12 hex digits of the key's "
                              f"sha256, got {key_id[:12]!r}")
        try:
            out[key_id] = int(n)
        except ValueError:
            raise ConfigError(f"RECSVC_RATE_LIMITS: {key_id}: expected a whole number of requests per minute") from None
        if out[key_id] < 0:
            raise ConfigError(f"RECSVC_RATE_LIMITS: {key_id}: must be 0 (unlimited) or more")
    return out


def allowed(limit: int, cur: float, prev: float, weight: float) -> bool:
    """The sliding-window estimate with this request counted stays within the limit."""
    return prev * weight + cur + 1 <= limit


def retry_after(limit: int, cur: float, prev: float, elapsed: float, window: float = WINDOW_S) -> int:
    """Whole seconds until a refused request would be allowed, if nobody else spends the key's budget meanwhile."""
    if cur + 1 <= limit and prev > 0:  # later in this window, once the previous window's weight has decayed enough
        wait = window * (1 - (limit - cur - 1) / prev) - elapsed
    else:  # in the next window, where this window's count is the decaying one
        wait = (window - elapsed) + (window * max(0.0, 1 - (limit - 1) / cur) if cur > 0 else 0.0)
    return int(min(max(1, math.ceil(wait)), window))


class RedisCounter:
    """The shared counter: one EVALSHA per check, on the store's hot-path client (`RedisFeatureStore.run_script`,
    which loads the script on first use and again after a server restart). Raises StoreUnavailable on any Redis
    trouble or when the store's read timeout passes."""

    def __init__(self, store: RedisFeatureStore) -> None:
        self.store = store
        self.prefix = store.keys.prefix

    def key(self, key_id: str, window: int) -> str:
        return f"{self.prefix}:rl:{{{key_id}}}:{window}"

    async def hit(self, key_id: str, limit: int, window: int, weight: float, block: int = 1) -> tuple[int, int, int]:
        """(requests granted: 0, 1 or `block`; count; previous window's count)."""
        keys = (self.key(key_id, window), self.key(key_id, window - 1))
        ok, cur, prev = await self.store.call(self.store.run_script(LUA, keys, (limit, repr(weight), KEY_TTL_S, block),
                                                                    name="ratelimit"))
        return int(ok), int(cur), int(prev)


class MemoryCounter:
    """The in-process twin for the embedded store: same windows, same arithmetic, one process."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}  # key_id -> [window, current, previous]

    async def hit(self, key_id: str, limit: int, window: int, weight: float, block: int = 1) -> tuple[int, int, int]:
        """As RedisCounter.hit, one request at a time (in process, a check costs nothing worth saving)."""
        c = self._counts.get(key_id)
        if c is None:
            c = self._counts[key_id] = [window, 0, 0]
        elif c[0] != window:
            c[:] = [window, 0, c[1] if c[0] == window - 1 else 0]
        if not allowed(limit, c[1], c[2], weight):
            return 0, c[1], c[2]
        c[1] += 1
        return 1, c[1], c[2]


WindowCounter = RedisCounter | MemoryCounter


class StoreRateLimiter:
    """The service's limiter (a `security.RateLimiter`). `store` is a getter: the lifespan opens the store after the
    app is built, so the counter (Redis or in-process, after the store's kind) is made at the first check."""

    def __init__(self, store: Callable[[], FeatureStore | None], per_minute: int,
                 overrides: Mapping[str, int] | None = None, clock: Callable[[], float] = time.time) -> None:
        if per_minute < 0:
            raise ConfigError("RECSVC_RATE_LIMIT: must be 0 (unlimited) or more")
        self._store = store
        self.per_minute = per_minute
        self.overrides = dict(overrides or {})
        self._clock = clock  # the wall clock: budgets are real time even when the service replays history
        self._counter: WindowCounter | None = None
        self._counter_of: FeatureStore | None = None
        self._skip_until = 0.0
        self._reserved: dict[str, list[int]] = {}  # key_id -> [window, requests reserved and not yet spent]

    def limit_for(self, key_id: str) -> int:
        return self.overrides.get(key_id, self.per_minute)

    def _counter_for(self, store: FeatureStore) -> WindowCounter:
        if store is not self._counter_of:
            self._counter = RedisCounter(store) if isinstance(store, RedisFeatureStore) else MemoryCounter()
            self._counter_of = store
        assert self._counter is not None
        return self._counter

    async def check(self, principal: Principal, scope: str) -> None:
        key_id = principal.key_id
        limit = self.overrides.get(key_id, self.per_minute)
        if limit <= 0 or key_id == OPEN_KEY_ID:
            return
        now = self._clock()
        if now < self._skip_until:
            _FAIL_BACKOFF.inc()
            return
        store = self._store()
        if store is None:  # outside the lifespan: nothing to count with
            _FAIL_ERROR.inc()
            return
        window = int(now // WINDOW_S)
        held = self._reserved.get(key_id)
        if held is not None and held[0] == window and held[1] > 0:  # spent from this process's block
            held[1] -= 1
            return
        elapsed = now - window * WINDOW_S
        block = min(BLOCK_MAX, limit // BLOCK_DIVISOR) if limit >= 2 * BLOCK_DIVISOR else 1
        try:
            ok, cur, prev = await self._counter_for(store).hit(key_id, limit, window, 1.0 - elapsed / WINDOW_S, block)
        except StoreUnavailable as exc:
            _FAIL_ERROR.inc()
            self._skip_until = now + FAIL_OPEN_BACKOFF_S
            log.warning("rate limit not checked (failing open for %.0f s): %s", FAIL_OPEN_BACKOFF_S, exc)
            return
        if not ok:
            RATE_LIMITED.labels(scope).inc()
            raise RateLimited(f"this API key is over its limit of {limit} requests per minute",
                              retry_after_s=retry_after(limit, cur, prev, elapsed))
        if ok > 1:  # this request and ok - 1 more (added to what concurrent checks reserved in the same window)
            held = self._reserved.get(key_id)
            if held is not None and held[0] == window:
                held[1] += ok - 1
            else:
                self._reserved[key_id] = [window, ok - 1]


def default_limiter(settings_per_minute: int, overrides_spec: str, store: Callable[[], FeatureStore | None],
                    known_key_ids: set[str]) -> StoreRateLimiter | None:
    """The limiter create_app installs, or None when nothing is limited (RECSVC_RATE_LIMIT=0 and no positive
    override): then the guard does not call one at all. Warns about overrides naming no configured key."""
    overrides = parse_overrides(overrides_spec)
    for key_id in sorted(set(overrides) - known_key_ids):
        log.warning("RECSVC_RATE_LIMITS: key id %s matches no configured API key", key_id)
    if settings_per_minute <= 0 and not any(n > 0 for n in overrides.values()):
        return None
    return StoreRateLimiter(store, settings_per_minute, overrides)
