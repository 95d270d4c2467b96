"""Every Redis key, field name, TTL and cap of the online store, in one place (schema version in the prefix).

A person's keys share the hash tag `{PERSON}` so they live in one Redis Cluster slot. A person id is the customer_id
of a customer, or `<kind>:<value>` (e.g. `anonymous:abc`) for someone known only by an alias; customer ids may not
start with a reserved alias prefix (`ALIAS_PREFIXES`), so the two can never be the same id. The Lua ingest script
(`features/lua/ingest.lua`) builds the same names from the prefix it is given; tests check both agree.

Layout (P = the prefix, default `rs:v1`):

| key                         | type   | holds                                              | bound            |
|-----------------------------|--------|----------------------------------------------------|------------------|
| P:id:{kind:value}           | string | alias -> canonical person id                       | TTL PERSON_TTL   |
| P:c:{person}:p              | hash   | scalars: first/last seen, country, counts, traits  | TTL PERSON_TTL   |
| P:c:{person}:r              | list   | recent events, newest first (msgpack)              | RECENT_CAP       |
| P:c:{person}:ia             | zset   | item affinity, forward-decayed                     | ITEM_AFF_CAP     |
| P:c:{person}:ca             | zset   | category affinity, forward-decayed                 | CAT_AFF_CAP      |
| P:c:{person}:b              | zset   | purchased item -> last ts                          | PURCHASED_CAP    |
| P:c:{person}:rt             | zset   | returned item -> last ts                           | RETURNED_CAP     |
| P:c:{person}:cart           | hash   | item -> quantity                                   | TTL CART_TTL     |
| P:c:{person}:ids            | set    | every alias linked to this person                  | TTL PERSON_TTL   |
| P:i:{item}                  | hash   | catalog item: j (msgpack Item), cats, avail, price | none (catalog)   |
| P:i:{item}:n                | hash   | event counts by type                               | TTL ITEM_STATS_TTL |
| P:pop:{scope}:pop           | zset   | item popularity, forward-decayed (14-day half-life)| POPULAR_CAP; `co:` scopes also TTL COUNTRY_POP_TTL |
| P:pop:{scope}:h:{hour}      | zset   | item events in one hour (hours since 1970), trending | EXPIREAT hour end + TRENDING_KEEP |
| P:pop:{scope}:tmp           | zset   | scratch of a trending read (weighted union of the hours) | deleted in the same script call |
| P:countries                 | zset   | country -> last popularity write (store time)       | COUNTRY_SCOPES_CAP |
| P:ev:{event_id}             | string | idempotency marker                                 | TTL DEDUPE_TTL   |
| P:log                       | stream | offline log entries, trimmed only after drain ack  | drained          |
| P:erased                    | set    | customer ids erased for privacy                    | none             |
| P:items                     | set    | every catalog item id                              | none (catalog)   |
| P:items:ver                 | string | catalog version, INCR on every upsert              | none             |

Person-hash field names: `first`, `last`, `country`, `n` (events), `orders`, `monetary`,
`cnt:type:<type>`, `cnt:channel:<channel>`, `ls:<channel>` (last seen), `t:<trait>` (published traits), `anon` (1: a
person known only by aliases), and the current session `s:id`, `s:started`, `s:last` (its items are the recent events
since `s:started`; it is over once `s:last` is SESSION_TTL old: readers check, the next live event starts a new one).
Popularity scopes: `all`, `ch:<channel>`, `co:<country>`. `country` is free text (the Online Retail data has names,
not codes), so the `co:` scopes are bounded by a registry, `P:countries`: a country gets popularity and trending keys
only while it is registered; it is registered on its first popularity write when fewer than COUNTRY_SCOPES_CAP
countries are, and leaves (its popularity key deleted) once COUNTRY_POP_TTL passes without a write. The key's own TTL
is refreshed on every write, so it expires with the registry entry. Events of a country refused for a full registry
still count everywhere else (its person's country, `all`, `ch:`). Trending is read as the hourly buckets of the last
TRENDING_KEEP seconds weighted by 2**(-age/TRENDING_HALF_LIFE): a forward-decayed score with a one-day half-life
would overflow a double within three years of the epoch. Events older than TRENDING_KEEP (history imports) add to
popularity but not to trending.
"""

from __future__ import annotations

import math

SCHEMA_VERSION = 1
DEFAULT_PREFIX = f"rs:v{SCHEMA_VERSION}"

DAY = 86400.0

# TTLs (seconds)
PERSON_TTL = int(400 * DAY)  # refreshed on every write: inactive people age out
CART_TTL = int(30 * DAY)
SESSION_TTL = 30 * 60  # a session ends after 30 minutes without events
ITEM_STATS_TTL = int(400 * DAY)
DEDUPE_TTL = int(30 * DAY)  # replays within this window count once online; the offline log dedupes forever

# Caps (entries)
RECENT_CAP = 100
ITEM_AFF_CAP = 200
CAT_AFF_CAP = 50
PURCHASED_CAP = 500
RETURNED_CAP = 200
POPULAR_CAP = 5000
COUNTRY_SCOPES_CAP = 256  # ISO 3166 has 249 codes; the Online Retail data names 38 countries
COUNTRY_POP_TTL = int(90 * DAY)  # a country without a popularity write for this long leaves the registry

# Forward decay: a weight w at time t adds w * 2**((t - DECAY_EPOCH) / half_life) to a score; reading at `now`
# multiplies by 2**(-(now - DECAY_EPOCH) / half_life). Sorted-set order is then the decayed order at any time.
DECAY_EPOCH = 1577836800.0  # 2020-01-01T00:00:00Z
AFFINITY_HALF_LIFE = 30 * DAY
POPULAR_HALF_LIFE = 14 * DAY
TRENDING_HALF_LIFE = 1 * DAY
TRENDING_KEEP = int(2 * DAY)
HOUR = 3600

# How much each event type says about interest in its item (and the item's categories).
AFFINITY_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "add_to_cart": 3.0,
    "remove_from_cart": -1.0,
    "purchase": 5.0,
    "return": -5.0,
    "email_click": 1.0,
    "content_click": 0.5,
    "offer_accept": 2.0,
}
# Which event types count towards item popularity, and by how much.
POPULARITY_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "add_to_cart": 2.0,
    "purchase": 4.0,
}

ALIAS_KINDS = ("customer", "anonymous", "device", "email")
# The person id of someone known only by an alias is "<kind>:<value>" (anonymous_person). A customer_id may not start
# with one of these (features.schema.Event refuses it), so a person id or a read by "<kind>:<value>" is never a
# customer's.
ALIAS_PREFIXES: tuple[str, ...] = tuple(f"{kind}:" for kind in ALIAS_KINDS[1:])


def session_open(last: float, now: float) -> bool:
    """A session whose last event was at `last` is still open at `now` (readers of both stores check it the same)."""
    return now - last <= SESSION_TTL


def decay_factor(half_life: float, t: float) -> float:
    """The forward-decay multiplier for an event at time t."""
    return math.pow(2.0, (t - DECAY_EPOCH) / half_life)


def read_factor(half_life: float, now: float) -> float:
    """Multiply a stored forward-decayed score by this to get its value at `now`."""
    return math.pow(2.0, -(now - DECAY_EPOCH) / half_life)


class Keys:
    """Key builder for one prefix (tests use a unique prefix each)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def alias(self, kind: str, value: str) -> str:
        return f"{self.prefix}:id:{{{kind}:{value}}}"

    def person(self, person: str, part: str) -> str:
        """part: p, r, ia, ca, b, rt, cart, s, ids."""
        return f"{self.prefix}:c:{{{person}}}:{part}"

    def item(self, item_id: str) -> str:
        return f"{self.prefix}:i:{{{item_id}}}"

    def item_stats(self, item_id: str) -> str:
        return f"{self.prefix}:i:{{{item_id}}}:n"

    def popular(self, scope: str) -> str:
        return f"{self.prefix}:pop:{{{scope}}}:pop"

    def trending(self, scope: str, hour: int) -> str:
        """hour = int(ts // 3600)."""
        return f"{self.prefix}:pop:{{{scope}}}:h:{hour}"

    def trending_scratch(self, scope: str) -> str:
        """Where the trending read sums a scope's hours (inside one script call, deleted before it returns)."""
        return f"{self.prefix}:pop:{{{scope}}}:tmp"

    def dedupe(self, event_id: str) -> str:
        return f"{self.prefix}:ev:{{{event_id}}}"

    @property
    def country_scopes(self) -> str:
        """The registry of countries with popularity keys: country -> last write (bounds the `co:` scopes)."""
        return f"{self.prefix}:countries"

    @property
    def log(self) -> str:
        return f"{self.prefix}:log"

    @property
    def erased(self) -> str:
        return f"{self.prefix}:erased"

    @property
    def catalog_version(self) -> str:
        """Counter bumped by every catalog upsert: readers reload their snapshot only when it moved."""
        return f"{self.prefix}:items:ver"

    @property
    def catalog_index(self) -> str:
        """Set of every catalog item id (for listing and export)."""
        return f"{self.prefix}:items"


def anonymous_person(kind: str, value: str) -> str:
    """The person id of someone known only by a non-customer id, until they log in."""
    return f"{kind}:{value}"


def qualified_alias(any_id: str) -> tuple[str, str] | None:
    """(kind, value) when a read id names an alias explicitly ("anonymous:abc", "device:d1", "email:h"), else None.

    Reads resolve a qualified id only as that alias (or the anonymous person of that name), and a bare id first as a
    customer, then as an anonymous, device or email id of that value: `anonymous:<id>` reaches an anonymous visitor
    whose id happens to equal a customer's."""
    if any_id.startswith(ALIAS_PREFIXES):
        kind, _, value = any_id.partition(":")
        return kind, value
    return None
