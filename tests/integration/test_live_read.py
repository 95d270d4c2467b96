"""The live read's reply (lua/live.lua) carries only what a decision reads: the person hash's country, orders, event
count and traits; every purchased and returned item as one newline-joined string (hundreds of items for a loyal
customer: one string to parse instead of hundreds); the recent events only while the session is open. The
LiveFeatures built from it are checked against the in-process store by tests/integration/test_store_contract.py."""

from __future__ import annotations

from datetime import datetime, timezone

from features import keys as K
from features.redis_store import SCRIPTS, RedisFeatureStore
from features.schema import LIVE_CATEGORIES, LIVE_RECENT_SCAN, Event, EventContext

NOW = 1_700_000_000.0


def ev(type_: str, item: str, ts: float, **kw: object) -> Event:
    return Event(type=type_, channel="web", item_id=item, customer_id="c1",  # type: ignore[arg-type]
                 timestamp=datetime.fromtimestamp(ts, tz=timezone.utc), **kw)  # type: ignore[arg-type]


async def test_the_live_reply_is_lean(redis_url: str, redis_prefix: str) -> None:
    store = RedisFeatureStore.from_url(redis_url, prefix=redis_prefix, timeout_s=2)
    try:
        s = EventContext(session_id="s1", country="UK")
        bought = [f"P{n:03d}" for n in range(120)]
        await store.ingest([ev("purchase", item, NOW - 10 * K.DAY - n) for n, item in enumerate(bought)]
                           + [ev("return", "P001", NOW - 9 * K.DAY), ev("return", "P002", NOW - 9 * K.DAY),
                              ev("view", "V1", NOW - 60, context=s)], now=NOW)
        await store.set_traits({"c1": {"segment": "loyal"}})

        async def reply(now: float) -> list[object]:
            args = (redis_prefix, "c1", repr(NOW - 30 * K.DAY), LIVE_RECENT_SCAN, LIVE_CATEGORIES, repr(now),
                    K.SESSION_TTL)
            return await store.run_script(SCRIPTS["live"], (), args, name="live")  # type: ignore[no-any-return]

        res = await reply(NOW)
        fields = res[1][0::2]  # type: ignore[index]
        assert set(fields) == {b"country", b"orders", b"n", b"t:segment"}
        assert res[2] == "\n".join(bought).encode()  # most recent first, one string
        assert sorted(res[4].split(b"\n")) == [b"P001", b"P002"]  # type: ignore[union-attr]
        assert res[7]  # the session is open: its recent events come along
        assert (await reply(NOW + K.SESSION_TTL + 1))[7] == []  # closed: they do not

        live = await store.live("c1", NOW - 30 * K.DAY, now=NOW)
        assert live is not None and live.purchased == bought and live.returned == ["P001", "P002"]
        assert live.orders == 120 and live.country == "UK" and live.traits == {"segment": "loyal"}
        assert live.session_items == ["V1"]
    finally:
        await store.close()
