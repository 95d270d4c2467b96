"""Content ranking as a pure function, on hand-worked cases: eligibility (schedule, segment targeting, availability,
placement), the score formula, ties, cold start; and the Content wire type's validation."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from features.content import DEFAULT_SLOTS, Content, check_slots, decode_content, parse_slots
from recsvc.content import Candidate, by_placement, normalized_affinity, rank

NOW = 1000.0


def cand(cid: str, cats: tuple[str, ...] = (), priority: int = 0, segments: tuple[str, ...] = (),
         start: float = float("-inf"), end: float = float("inf")) -> Candidate:
    return Candidate(cid, "banner", cid.upper(), None, None, tuple((c.casefold(), c) for c in cats),
                     frozenset(segments), start, end, priority)


CATALOG = [
    cand("A", ("Garden",), priority=50),
    cand("B", ("Kitchen", "Garden"), priority=0),
    cand("C", (), priority=100, segments=("at_risk",)),
    cand("D", ("Toys",), priority=100),
    cand("E", ("Kitchen",), priority=100, segments=("vip",)),  # targeted at another segment
    cand("F", ("kitchen",), priority=0),  # matches case-insensitively, ties with B
    cand("G", ("Kitchen",), priority=100, start=2000.0),  # not started
    cand("H", ("Kitchen",), priority=100, end=1000.0),  # ended (end is exclusive)
    cand("I", (), priority=10, start=1000.0),  # starts now (start is inclusive)
]
AFFINITY = [("Kitchen", 8.0), ("Garden", 4.0), ("Toys", -2.0)]  # normalized: Kitchen 1, Garden 0.5, Toys 0


def test_normalized_affinity_divides_by_the_top_score_and_drops_negatives() -> None:
    assert normalized_affinity(AFFINITY) == {"kitchen": 1.0, "garden": 0.5}
    assert normalized_affinity([("Toys", -1.0)]) == {}
    assert normalized_affinity([]) == {}


def test_hand_worked_order_scores_and_reasons() -> None:
    # C: 0.3 (segment) + 0.2 * 100/100 = 0.5; B: 0.5 * 1 (Kitchen) = 0.5; F: 0.5; A: 0.5 * 0.5 + 0.2 * 0.5 = 0.35;
    # D: Toys is negative, so 0.2 * 1 = 0.2; I: 0.2 * 0.1 = 0.02. Ties at 0.5: priority (C) first, then id (B < F).
    got = rank(CATALOG, now=NOW, segment="at_risk", affinity=AFFINITY, k=20)
    assert [(r.candidate.content_id, r.score, r.reasons) for r in got] == [
        ("C", 0.5, ("segment:at_risk",)),
        ("B", 0.5, ("category:Kitchen",)),
        ("F", 0.5, ("category:kitchen",)),
        ("A", 0.35, ("category:Garden",)),
        ("D", 0.2, ("priority",)),
        ("I", 0.02, ("priority",)),
    ]


def test_category_and_segment_reasons_together() -> None:
    both = cand("X", ("Garden",), priority=20, segments=("at_risk",))
    [r] = rank([both], now=NOW, segment="at_risk", affinity=AFFINITY, k=3)
    assert r.score == pytest.approx(0.25 + 0.3 + 0.04) and r.reasons == ("category:Garden", "segment:at_risk")


def test_reason_codes_are_tokens() -> None:
    spaced = cand("S", ("Home & Garden",), priority=10, segments=("at risk",))
    [r] = rank([spaced], now=NOW, segment="at risk", affinity=[("home & garden", 2.0)], k=1)
    assert r.reasons == ("category:Home_Garden", "segment:at_risk")


def test_cold_start_is_priority_order_without_targeted_items() -> None:
    got = rank(CATALOG, now=NOW, segment=None, affinity=[], k=20)
    assert [r.candidate.content_id for r in got] == ["D", "A", "I", "B", "F"]
    assert all(r.reasons == ("priority",) for r in got)
    assert [r.score for r in got] == [0.2, 0.1, 0.02, 0.0, 0.0]


def test_k_truncates_after_ranking_and_schedule_moves_with_now() -> None:
    top2 = rank(CATALOG, now=NOW, segment="at_risk", affinity=AFFINITY, k=2)
    assert [r.candidate.content_id for r in top2] == ["C", "B"]
    later = rank(CATALOG, now=2000.0, segment="vip", affinity=AFFINITY, k=3)  # G started; E now targets us
    assert [(r.candidate.content_id, r.score) for r in later] == [("E", 1.0), ("G", 0.7), ("B", 0.5)]  # B < F by id
    assert "I" not in [r.candidate.content_id for r in rank(CATALOG, now=999.0, segment=None, affinity=[], k=20)]


def item(cid: str, **kw: object) -> Content:
    kw.setdefault("channels", ["web"])
    kw.setdefault("slots", ["hero"])
    return Content(content_id=cid, kind="banner", title=cid, **kw)  # type: ignore[arg-type]


def test_by_placement_indexes_available_items_per_channel_and_slot_in_priority_order() -> None:
    items = [item("a", priority=5, channels=["web", "app"], slots=["hero", "sidebar"]), item("b", priority=9),
             item("c", priority=100, available=False), item("d", priority=9, channels=["email"], slots=["email_block"])]
    idx = by_placement(items)
    assert {p: [c.content_id for c in cs] for p, cs in idx.items()} == {
        ("web", "hero"): ["b", "a"], ("web", "sidebar"): ["a"], ("app", "hero"): ["a"], ("app", "sidebar"): ["a"],
        ("email", "email_block"): ["d"],
    }


def test_candidate_schedule_from_content_datetimes() -> None:
    c = Candidate.of(item("s", start=datetime(2011, 12, 1), end=datetime(2011, 12, 31, tzinfo=timezone.utc)))
    assert c.start == datetime(2011, 12, 1, tzinfo=timezone.utc).timestamp()  # no zone: UTC
    assert c.end == datetime(2011, 12, 31, tzinfo=timezone.utc).timestamp()
    open_ended = Candidate.of(item("o"))
    assert open_ended.start == float("-inf") and open_ended.end == float("inf")


def field_of_error(body: bytes) -> str:
    from recsvc.errors import field_of

    with pytest.raises(msgspec.ValidationError) as info:
        items, path = decode_content(body)
        check_slots(items, set(DEFAULT_SLOTS), path)
    return field_of(str(info.value))[1]  # type: ignore[return-value]


def one_item(**fields: object) -> bytes:
    """A JSON array of one content item, valid unless `fields` make it otherwise."""
    item: dict[str, object] = {"content_id": "a", "kind": "banner", "title": "t", "channels": ["web"],
                               "slots": ["hero"]}
    item.update(fields)
    return msgspec.json.encode([item])


@pytest.mark.parametrize(("body", "field"), [
    (one_item(x=1), "$[0].x"),
    (one_item(kind="poster"), "$[0].kind"),
    (one_item(channels=["tv"]), "$[0].channels[0]"),
    (one_item(channels=[]), "$[0].channels"),
    (b'{"items":[{"content_id":"a","kind":"banner","title":"t","channels":["web"],"slots":["moon"]}]}',
     "$.items[0].slots"),
    (one_item(priority=101), "$[0].priority"),
    (one_item(start="2024-01-02T00:00:00Z", end="2024-01-01T00:00:00Z"), "$[0].end"),
    (one_item(url="javascript:alert(1)"), "$[0].url"),
    (one_item(content_id="a b"), "$[0].content_id"),
    (one_item(title=""), "$[0].title"),
    (one_item(body="x" * 8193), "$[0].body"),
])
def test_content_validation_names_the_field(body: bytes, field: str) -> None:
    assert field_of_error(body) == field


def test_batch_limit_and_slot_config() -> None:
    one = {"content_id": "a", "kind": "push", "title": "t", "channels": ["app"], "slots": ["push"]}
    with pytest.raises(msgspec.ValidationError, match="at most 1000"):
        decode_content(msgspec.json.encode([one] * 1001))
    items, path = decode_content(msgspec.json.encode({"items": [one]}))
    assert path == "$.items" and items[0].kind == "push"
    assert parse_slots(" hero, sidebar ,hero") == ("hero", "sidebar")
    with pytest.raises(ValueError, match="RECSVC_CONTENT_SLOTS"):
        parse_slots("Hero")
