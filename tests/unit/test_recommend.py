"""The recommendation decision as pure functions: hand-worked scores, rules, diversity, reasons, the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.bundle import load_bundle
from recsvc.recommend import (
    DAY,
    CatalogEntry,
    LiveHistory,
    LiveView,
    Request,
    ServingRecommender,
    Signals,
    blend,
    reasons,
    scaled,
    similarity_signal,
    token,
)
from recsvc.rules import ChannelRules, RulesError, SegmentRules, Weights, load_rules, parse_rules
from tests.recs_fixtures import bundle_contents, category, write_bundle

NOW = 1_700_000_000.0
WEB = ChannelRules()  # defaults: model 1.0, session 0.7, context 0.9, cart 0.4, category 0.15, trending 0.2, popular 0.05


def ids(entries: list) -> list[str]:  # type: ignore[type-arg]
    return [e.item_id for e in entries]


def test_signals_add_up_with_their_weights_and_reasons_name_the_strong_ones() -> None:
    sig = Signals(model={"A": 1.0, "B": 0.5}, session={"B": (1.0, "X"), "C": (0.2, "X")},
                  trending={"C": 1.0, "A": 0.5}, trending_label="trending_in:GB")
    out = blend(sig, LiveView(person="p"), {}, WEB, None, Request("web", 10), NOW)
    # A = 1.0 + 0.2*0.5 = 1.1; B = 0.5 + 0.7*1.0 = 1.2; C = 0.7*0.2 + 0.2*1.0 = 0.34
    assert ids(out) == ["B", "A", "C"]
    assert [e.score for e in out] == pytest.approx([1.2, 1.1, 0.34])
    assert out[0].reasons == ["similar_to:X", "for_you"]  # 0.7 and 0.5 of 1.2: both carry a quarter
    assert out[1].reasons == ["for_you"]  # trending's 0.1 of 1.1 is below a quarter
    assert out[2].reasons == ["trending_in:GB", "similar_to:X"]


def test_rules_remove_returned_recent_purchases_cart_unavailable_and_excluded() -> None:
    sig = Signals(model={i: 1.0 - n / 10 for n, i in enumerate("ABCDEFG")})
    live = LiveView(person="p", known=True, purchased={"A", "B"}, purchased_recent={"A": NOW - DAY},
                    returned={"C"}, cart=["D"])
    catalog = {"E": CatalogEntry(False, ()), "F": CatalogEntry(True, ())}
    out = blend(sig, live, catalog, WEB, None, Request("web", 10, exclude=frozenset({"G"})), NOW)
    # A bought yesterday (cool-down 7 days), C returned, D in the cart, E unavailable, G excluded by the caller
    assert ids(out) == ["B", "F"]
    assert out[0].reasons == ["repeat"]  # bought before the cool-down: a repeat purchase
    never = blend(sig, live, catalog, ChannelRules(purchased="exclude"), None, Request("web", 10), NOW)
    assert "B" not in ids(never)
    allow = blend(sig, live, catalog, ChannelRules(purchased="allow", exclude_unavailable=False, exclude_in_cart=False),
                  None, Request("web", 10), NOW)
    assert ids(allow) == ["A", "B", "D", "E", "F", "G"]  # only the return stays out


def test_context_item_is_never_recommended_and_its_neighbours_lead() -> None:
    sig = Signals(model={"A": 1.0, "N": 0.2}, context={"N": (1.0, "CTX"), "CTX": (1.0, "CTX")})
    out = blend(sig, LiveView(person="p"), {}, WEB, None, Request("web", 5, context_item="CTX"), NOW)
    assert ids(out) == ["N", "A"]  # N: 0.2 + 0.9 = 1.1 beats A's 1.0; the context item itself is left out
    assert out[0].reasons == ["similar_to:CTX"]
    tie = blend(Signals(model={"A": 1.0, "N": 0.1}, context={"N": (1.0, "CTX")}), LiveView(person="p"), {}, WEB, None,
                Request("web", 5, context_item="CTX"), NOW)
    assert ids(tie) == ["A", "N"]  # 1.0 each: ties go by item id


def test_diversity_caps_a_category_then_fills_a_short_list() -> None:
    sig = Signals(model={"A1": 1.0, "A2": 0.9, "A3": 0.8, "B1": 0.5})
    catalog = {i: CatalogEntry(True, (i[0], "sub")) for i in sig.model}
    rules = ChannelRules(max_per_category=2)
    assert ids(blend(sig, LiveView(person="p"), catalog, rules, None, Request("web", 3), NOW)) == ["A1", "A2", "B1"]
    # asked for 4, only 4 candidates: the capped one comes back rather than a short answer
    assert ids(blend(sig, LiveView(person="p"), catalog, rules, None, Request("web", 4), NOW)) == ["A1", "A2", "A3", "B1"]


def test_category_filter_and_affinity() -> None:
    sig = Signals(model={"A": 1.0, "B": 0.9, "C": 0.2})
    catalog = {"A": CatalogEntry(True, ("Kitchen",)), "B": CatalogEntry(True, ("Garden", "Tools")),
               "C": CatalogEntry(True, ("Garden",))}
    live = LiveView(person="p", category_affinity={"Garden": 1.0})
    out = blend(sig, live, catalog, ChannelRules(weights=Weights(category=1.0)), None, Request("web", 3), NOW)
    assert ids(out) == ["B", "C", "A"]  # B 1.9, C 1.2, A 1.0
    assert out[0].reasons == ["category:Garden", "for_you"]  # 1.0 and 0.9 of 1.9
    assert out[1].reasons == ["category:Garden"]  # the model's 0.2 of 1.2 is below a quarter
    only = blend(sig, live, catalog, WEB, None, Request("web", 3, category="tools"), NOW)
    assert ids(only) == ["B"]  # case-insensitive, any level of the item's categories


def test_segment_rules_boost_repeat_purchases_and_say_so() -> None:
    sig = Signals(model={"OLD": 0.6, "NEW": 0.8})
    live = LiveView(person="p", known=True, segment="at_risk", purchased={"OLD"})
    seg = SegmentRules(repeat_boost=0.5)
    out = blend(sig, live, {}, WEB, seg, Request("web", 2), NOW)
    assert ids(out) == ["OLD", "NEW"]  # 0.6 * 1.5 = 0.9 > 0.8
    assert out[0].reasons == ["repeat", "segment:at_risk"]


def test_reason_codes_are_tokens() -> None:
    assert token("at risk") == "at_risk" and token("Home & Garden") == "Home_Garden"
    assert token("GB") == "GB" and token("Küche") == "Küche" and token("a.b-c_d") == "a.b-c_d"
    assert token(" new:\tin\nstore ") == "new_in_store" and token("&&") == "_"
    sig = Signals(model={"OLD": 0.6, "NEW": 0.8})
    catalog = {"OLD": CatalogEntry(True, ("Home & Garden",)), "NEW": CatalogEntry(True, ("Toys",))}
    live = LiveView(person="p", known=True, segment="at risk", purchased={"OLD"},  # as the segments model names it
                    category_affinity={"Home & Garden": 1.0})
    out = blend(sig, live, catalog, ChannelRules(weights=Weights(category=1.0)), SegmentRules(repeat_boost=1.0),
                Request("web", 2), NOW)
    # OLD: category 1.0, repeat 0.6, segment boost 1.0 * 0.6: each at least a quarter of 2.2
    assert out[0].item_id == "OLD" and out[0].reasons == ["category:Home_Garden", "repeat", "segment:at_risk"]


def test_reasons_keep_at_least_one_and_at_most_three() -> None:
    assert reasons([(0.1, "popular")]) == ["popular"]
    assert reasons([(1.0, "a"), (1.0, "b"), (1.0, "c"), (1.0, "d")]) == ["a", "b", "c"]
    assert reasons([(1.0, "a"), (0.2, "b")]) == ["a"]


def test_scaled_and_similarity_signal(tmp_path: Path) -> None:
    assert scaled([("a", 2.0), ("b", 1.0), ("c", 0.0)]) == {"a": 1.0, "b": 0.5}
    assert scaled([]) == {}
    arrays, meta = load_bundle(write_bundle(tmp_path / "b"))
    rec = ServingRecommender.from_bundle(arrays, meta)
    sig = similarity_signal(rec, ["I01", "I07"])
    assert sig["I00"] == (1.0, "I01") and sig["I02"] == (1.0, "I01")
    assert sig["I06"] == pytest.approx((0.7, "I07"))  # the second seed counts 0.7
    assert not any(category(i) not in ("c0", "c1") for i in sig)


def test_bundle_neighbours_precomputed_candidates_and_live_scoring(tmp_path: Path) -> None:
    arrays, meta = load_bundle(write_bundle(tmp_path / "b"))
    rec = ServingRecommender.from_bundle(arrays, meta)
    assert [i for i, _ in rec.similar("I01", 3)] == ["I00", "I02", "I03"]  # 1, 1, 1/2; ties by index
    assert rec.similar("I01", 3)[2][1] == pytest.approx(0.5)
    assert rec.similar("nope", 3) == []
    pre = rec.precomputed("u1")
    assert pre is not None
    scores, purchases = pre
    assert list(scores) == ["I03", "I08", "I12", "I17", "I01"] and scores["I03"] == 1.0 and purchases == 2.0
    assert all(scores[a] > scores[b] for a, b in zip(list(scores), list(scores)[1:]))
    assert rec.precomputed("stranger") is None
    live = rec.score_live(LiveHistory({"I05": 3.0}, {"I06": (2.0, NOW - 5 * DAY)}, "GB"), NOW)
    assert live and max(live.values()) == 1.0 and set(live) <= set(rec.item_ids)
    assert rec.score_live(LiveHistory({}, {}, None), NOW) == {}


def test_bundle_inconsistencies_are_refused() -> None:
    arrays, meta = bundle_contents()
    bad = dict(arrays, user_top_items=np.full((2, 5), 99, dtype=np.int32))
    with pytest.raises(ValueError, match="user_top_items"):
        ServingRecommender.from_bundle(bad, meta)
    with pytest.raises(ValueError, match="item_categories"):
        ServingRecommender.from_bundle(arrays, {**meta, "item_categories": [["x"]]})
    with pytest.raises(ValueError, match="scorer"):
        ServingRecommender.from_bundle(arrays, {k: v for k, v in meta.items() if k != "scorer"})


def test_rules_file_loads_and_bad_keys_are_named() -> None:
    rules = load_rules()
    assert rules.for_channel("email").purchase_cooldown_days == 30
    assert rules.for_channel("email").weights.session == 0.3 and rules.for_channel("email").weights.model == 1.0
    assert rules.for_channel("web") == rules.defaults
    assert rules.segment("at risk") is not None and rules.segment(None) is None
    for doc, where in [
        ({"channels": {"emial": {}}}, "channels.emial"),
        ({"defaults": {"weights": {"sesion": 1}}}, "defaults.weights.sesion"),
        ({"defaults": {"purchased": "sometimes"}}, "defaults.purchased"),
        ({"defaults": {"max_per_category": -1}}, "defaults.max_per_category"),
        ({"segments": {"x": {"repeat_boost": "lots"}}}, "segments.x.repeat_boost"),
        ({"defaults": {"exclude_returned": "yes"}}, "defaults.exclude_returned"),
        ({"extra": {}}, "extra"),
    ]:
        with pytest.raises(RulesError, match=where.replace(".", r"\.")):
            parse_rules(doc)


def test_bad_rules_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[defaults\n", encoding="utf-8")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(path)
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "absent.toml")
