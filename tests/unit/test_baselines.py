"""Baselines and training data on planted logs: repeat purchase, popularity (global and per country), event weights
with decay, identity links, erasure, file validation and the fingerprint."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.memory_store import MemoryFeatureStore
from features.offline_log import EVENT_SCHEMA, LINK_SCHEMA, drain, read_events, read_links
from features.schema import Event
from training.customers import SEGMENTS, customer_features, segments_at
from training.data import DataError, build_testset, build_trainset, fingerprint, load_dataset, load_interactions, to_ts
from training.models.baselines import Popularity, PopularityByCountry, RepeatPurchase
from training.models.lightfm_hybrid import LightFMHybrid

DAY = 86400.0
SPLIT = to_ts("2011-06-01")


def row(eid: str, user: str | None, item: str, days_before: float, type_: str = "purchase", country: str = "UK",
        person: str | None = None) -> dict[str, object]:
    return {"event_id": eid, "person_id": person or user, "customer_id": user, "type": type_, "channel": "web",
            "ts": SPLIT - days_before * DAY, "item_id": item, "quantity": 1, "value": 1.0, "country": country}


def planted_rows() -> list[dict[str, object]]:
    rows = []
    # u0 bought A five times (last 10 days ago), B once 5 days ago
    rows += [row(f"a{i}", "u0", "A", 10 + 7 * i) for i in range(5)] + [row("b0", "u0", "B", 5)]
    # u1 bought D three times 300 days ago, E once yesterday: recency wins
    rows += [row(f"d{i}", "u1", "D", 300 + i) for i in range(3)] + [row("e0", "u1", "E", 1)]
    # u2 bought F and G once at the same time; G is more popular with others (the tie-break)
    rows += [row("f0", "u2", "F", 20), row("g0", "u2", "G", 20)]
    rows += [row(f"pg{i}", f"p{i}", "G", 3) for i in range(6)]
    # France buys H, the UK does not
    rows += [row(f"h{i}", f"fr{i}", "H", 4, country="FR") for i in range(4)]
    # u3 viewed I many times, carted J once, bought and returned K
    rows += [row(f"v{i}", "u3", "I", 2, type_="view") for i in range(2)]
    rows += [row("c0", "u3", "J", 2, type_="add_to_cart")]
    rows += [row("k0", "u3", "K", 9), row("k1", "u3", "K", 8, type_="return")]
    # anonymous history later linked to u4, and a test-window purchase by u0 and u1
    rows += [row("an0", None, "L", 6, person="anonymous:x1"), row("u4p", "u4", "A", 3)]
    rows += [row("t0", "u0", "A", -3), row("t1", "u0", "Z", -4), row("t2", "u1", "B", -2)]
    return rows


def write_file(path: Path, rows: list[dict[str, object]]) -> Path:
    cols = {f.name: [r.get(f.name) for r in rows] for f in EVENT_SCHEMA}
    pq.write_table(pa.table(cols, schema=EVENT_SCHEMA), path)
    return path


@pytest.fixture()
def train_and_file(tmp_path: Path) -> tuple[object, Path]:
    path = write_file(tmp_path / "log.parquet", planted_rows())
    ds = load_interactions(path, tmp_path)
    return build_trainset(ds, SPLIT), path


def top(model: object, train: object, user: str, n: int = 1) -> list[str]:
    t = train  # type: ignore[assignment]
    s = model.score(np.array([t.user_ids.index(user)]))[0]  # type: ignore[attr-defined]
    return [t.item_ids[i] for i in np.argsort(-s, kind="stable")[:n]]


def test_repeat_purchase_ranks_frequency_recency_and_breaks_ties_by_popularity(train_and_file: tuple) -> None:
    train, _ = train_and_file
    rep = RepeatPurchase(half_life_days=60)
    rep.fit(train)
    assert top(rep, train, "u0", 2) == ["A", "B"]
    assert top(rep, train, "u1") == ["E"]
    assert top(rep, train, "u2", 2) == ["G", "F"]


def test_popularity_global_and_per_country(train_and_file: tuple) -> None:
    train, _ = train_and_file
    pop = Popularity()
    pop.fit(train)
    assert top(pop, train, "u0") == ["G"]  # six recent buyers
    by_country = PopularityByCountry()
    by_country.fit(train)
    assert top(by_country, train, "fr0") == ["H"]
    assert top(by_country, train, "u0") != ["H"]


def test_event_weights_decay_and_returns(train_and_file: tuple) -> None:
    train, path = train_and_file
    w = train.weights.toarray()
    u3 = train.user_ids.index("u3")
    i, j, k = (train.item_ids.index(x) for x in "IJK")
    assert w[u3, j] > w[u3, i] > 0  # one cart (3) outweighs two views (1 each)
    assert w[u3, k] == 0.0  # bought then returned: no interest left, never negative
    u0, a, b = train.user_ids.index("u0"), train.item_ids.index("A"), train.item_ids.index("B")
    assert train.purchases[u0, a] == 5 and train.last_ts[u0, a] == pytest.approx(SPLIT - 10 * DAY)
    # decay: B's single purchase 5 days ago weighs 5 * 2^(-5/120)
    assert w[u0, b] == pytest.approx(5 * 2 ** (-5 / 120), rel=1e-5)
    doubled = build_trainset(load_interactions(path, path.parent), SPLIT, weights={"add_to_cart": 10.0})
    assert doubled.weights[u3, j] == pytest.approx(10 * 2 ** (-2 / 120), rel=1e-5)
    with pytest.raises(ValueError, match="event_weights.view"):
        build_trainset(load_interactions(path, path.parent), SPLIT, weights={"view": "lots"})  # type: ignore[dict-item]


def test_test_set_follows_the_protocol(train_and_file: tuple, tmp_path: Path) -> None:
    train, path = train_and_file
    test = build_testset(load_interactions(path, tmp_path), train, SPLIT, SPLIT + 30 * DAY)
    by_user = {train.user_ids[u]: {train.item_ids[i] for i in rel} for u, rel in zip(test.users, test.relevant)}
    # Z is unknown to the training catalog, so it cannot be scored; u1's B counts
    assert by_user == {"u0": {"A"}, "u1": {"B"}}


def test_links_attribute_anonymous_history_and_erasure_drops_customers(tmp_path: Path) -> None:
    day = tmp_path / "events" / "date=2011-05-20"
    day.mkdir(parents=True)
    write_file(day / "part-1.parquet", planted_rows())
    (tmp_path / "links").mkdir()
    pq.write_table(pa.table({"alias": ["anonymous:x1"], "person_id": ["u4"], "ts": [SPLIT]}, schema=LINK_SCHEMA),
                   tmp_path / "links" / "part-1.parquet")
    (tmp_path / "erased.txt").write_text("u1\n")
    ds = load_interactions(None, tmp_path)
    assert set(ds.events.loc[ds.events["item_id"] == "L", "user"]) == {"u4"}
    assert "u1" not in set(ds.events["user"])
    # the file source honours erased.txt too
    ds_file = load_interactions(write_file(tmp_path / "f.parquet", planted_rows()), tmp_path)
    assert "u1" not in set(ds_file.events["user"])


def test_erased_person_stays_out_after_link_attribution(tmp_path: Path) -> None:
    """An anonymous purchase later linked to u1 (by u1 logging in), then u1 erased: read_events keeps the anonymous row
    (its ids are not u1's), and attribution through the link used to bring it back as u1. Nothing of u1, nor of the
    aliases linked to them (anonymous x1, device d1, even when used again after the erasure), may reach training."""
    def at(day: int) -> datetime:
        return datetime.fromtimestamp(SPLIT - (40 - day) * DAY, tz=timezone.utc)

    def buy(eid: str, item: str, day: int, **ids: str) -> Event:
        return Event(type="purchase", channel="web", event_id=eid, item_id=item, value=3.0, quantity=1,
                     timestamp=at(day), **ids)  # type: ignore[arg-type]

    events = [
        buy("x1-secret", "SECRET", 1, anonymous_id="x1"),  # anonymous, later linked to u1
        buy("d1-secret", "SECRET2", 2, device_id="d1", anonymous_id="x1"),  # device d1 joins x1's person
        buy("u1-login", "A", 3, customer_id="u1", anonymous_id="x1"),  # login: x1 and d1 are linked to u1
        buy("x2-anon", "B", 4, anonymous_id="x2"),
        buy("u2-login", "C", 5, customer_id="u2", anonymous_id="x2"),  # x2 linked to u2: kept, attributed to u2
    ]
    events += [buy(f"c{u}-{d}", "ABC"[(u + d) % 3], 6 + d, customer_id=f"c{u}") for u in range(8) for d in range(3)]
    after = [buy("x1-after", "SECRET3", 30, anonymous_id="x1"), buy("d1-after", "SECRET3", 31, device_id="d1")]

    async def go() -> None:
        store = MemoryFeatureStore()
        await store.ingest(events, now=SPLIT)
        await store.erase("u1")
        await store.ingest(after, now=SPLIT)
        await drain(store, tmp_path)

    asyncio.run(go())
    links = read_links(tmp_path).to_pandas()
    assert {("anonymous:x1", "u1"), ("anonymous:x2", "u2")} <= set(zip(links["alias"], links["person_id"]))
    raw = set(read_events(tmp_path)["event_id"].to_pylist())
    assert {"x1-secret", "d1-secret", "x1-after", "d1-after"} <= raw and "u1-login" not in raw  # the planted case

    ds = load_interactions(None, tmp_path)
    theirs = {"x1-secret", "d1-secret", "u1-login", "x1-after", "d1-after"}
    assert not theirs & set(ds.events["event_id"]) and not {"SECRET", "SECRET2", "SECRET3"} & set(ds.events["item_id"])
    assert "u1" not in set(ds.events["user"]) and not any("x1" in u or "d1" in u for u in ds.events["user"])
    assert set(ds.events.loc[ds.events["event_id"] == "x2-anon", "user"]) == {"u2"}  # others' links still attribute
    assert ds.fingerprint == fingerprint(read_events(tmp_path).to_pandas().query("event_id not in @theirs"))
    # every training reader: the whole log (segments), the recommender's train and test sets, customer features
    assert load_dataset(None, tmp_path).events.equals(ds.events)
    train = build_trainset(ds, SPLIT + DAY)
    assert "u1" not in train.user_ids and not any("x1" in u or "d1" in u for u in train.user_ids)
    for item in ("SECRET", "SECRET2"):
        assert item not in train.item_ids or train.weights[:, train.item_ids.index(item)].nnz == 0
    assert "u1" not in customer_features(ds.events, SPLIT + DAY).index
    # the same rows as a file source: data_dir's erasures and links apply the same way
    as_file = write_file(tmp_path / "f.parquet", read_events(tmp_path).to_pylist())
    from_file = load_interactions(as_file, tmp_path).events
    assert set(from_file["event_id"]) == set(ds.events["event_id"]) and "u1" not in set(from_file["user"])


def test_trainset_segments_come_from_before_the_split_and_reach_lightfm(tmp_path: Path) -> None:
    rows = planted_rows()
    # after the split u1, u2 and fr0 buy every day: counted, that would move them to the top of R and F
    rows += [row(f"late{u}-{d}", u, "Q", -d - 0.5) for u in ("u1", "u2", "fr0") for d in range(30)]
    ds = load_interactions(write_file(tmp_path / "log.parquet", rows), tmp_path)
    train = build_trainset(ds, SPLIT)
    seg = dict(zip(train.user_ids, train.user_segment))
    # the RFM rules on the events before the split, and only those: the same as if the later events never happened
    before = ds.events[ds.events["ts"] < SPLIT]
    assert seg == {u: segments_at(before, SPLIT).get(u) for u in train.user_ids}
    pre_only = load_interactions(write_file(tmp_path / "pre.parquet", [r for r in rows if r["ts"] < SPLIT]), tmp_path)
    assert build_trainset(pre_only, SPLIT).user_segment == train.user_segment
    later = segments_at(ds.events, SPLIT + 31 * DAY)
    assert any(later[u] != seg[u] for u in ("u1", "u2", "fr0"))  # so a leak would show
    # real segments for every customer who bought before the split; none for anonymous people and viewers only
    assert all(seg[u] in SEGMENTS for u in ("u0", "u1", "u2", "u3", "u4", "fr0", "p0"))
    assert seg["anonymous:x1"] is None and len(set(seg.values()) - {None}) >= 2
    # LightFM gets both customer features: each customer's row holds its country and its segment
    model = LightFMHybrid(no_components=4, epochs=2, user_metadata_weight=0.2)
    model.fit(train)
    names = model.user_space.names
    assert {f"segment:{s}" for s in seg.values() if s} <= set(names) and {"country:UK", "country:FR"} <= set(names)
    m = model.user_space.matrix.toarray()
    u = train.user_ids.index("fr0")
    assert m[u, names.index(f"segment:{seg['fr0']}")] > 0 and m[u, names.index("country:FR")] > 0


def test_file_source_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_interactions(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.csv"
    bad.write_text("event_id,type,item_id,customer_id\n1,purchase,A,u0\n")
    with pytest.raises(DataError, match="missing column.*ts"):
        load_interactions(bad, tmp_path)
    bad.write_text("event_id,type,item_id,customer_id,ts\n1,purchase,A,u0,yesterday\n")
    with pytest.raises(DataError, match="'ts'"):
        load_interactions(bad, tmp_path)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        to_ts("01/11/2011")


def test_csv_source_with_descriptions(tmp_path: Path) -> None:
    csv = tmp_path / "log.csv"
    csv.write_text("event_id,customer_id,type,ts,item_id,quantity,value,country,Description\n"
                   f"1,17850,purchase,{SPLIT - DAY},85123A,6,15.3,United Kingdom,WHITE HANGING HEART T-LIGHT HOLDER\n")
    ds = load_interactions(csv, tmp_path)
    assert ds.events["user"].tolist() == ["17850"]  # ids stay strings, never 17850.0
    train = build_trainset(ds, SPLIT)
    assert train.item_title == ["WHITE HANGING HEART T-LIGHT HOLDER"]


def test_fingerprint_depends_on_the_events_not_their_order() -> None:
    rows = planted_rows()
    t1 = pa.table({f.name: [r.get(f.name) for r in rows] for f in EVENT_SCHEMA}, schema=EVENT_SCHEMA)
    t2 = t1.take(pa.array(list(reversed(range(t1.num_rows)))))
    assert fingerprint(t1) == fingerprint(t2) and len(fingerprint(t1)) == 64
    assert fingerprint(t1.slice(1)) != fingerprint(t1)
