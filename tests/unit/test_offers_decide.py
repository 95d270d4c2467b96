"""The pure decision logic (recsvc.offers): each eligibility rule, caps, arbitration by propensity x value x lever,
where each propensity comes from (affinity prior, learned model, posterior), and the logged probabilities of the
exploring policy against their empirical frequencies; the bulk paths (eligibility without explanations, rankings of
the draws for a whole batch) against the reference paths on random cases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.offer_store import Contact
from features.propensity_model import FeatureSpec, PropensityModel, TreeEnsemble
from recsvc import offers as offers_module
from recsvc.offer_policy import Cap, OfferPolicy, PriorSettings
from recsvc.offers import DrawBank, build_evidence, compile_catalog, decide, model_applies, screen
from tests.offers_support import COFFEE_P, DAY, NOW, OTHER_P, offer, record, tiny_model

GREEDY = OfferPolicy(exploration=0.0, caps=(), prior=PriorSettings(segments={"vip": 0.2}))


def run(offers, rec, *, channel="web", k=1, policy=GREEDY, model=None, counts=None, seed=0, explain=True):
    catalog = compile_catalog({o.offer_id: o for o in offers}, 1, policy, model, "recsvc-propensity@7" if model else None)
    evidence = build_evidence(counts or {}, policy)
    return decide([(rec, rec.person_id)], catalog, evidence, channel, k, NOW, policy, np.random.default_rng(seed),
                  explain=explain)[0]


def rule_of(d, offer_id):
    return next((x.rule for x in d.excluded if x.offer_id == offer_id), None)


@pytest.mark.parametrize(
    ("kw", "rec", "rule"),
    [
        ({"active": False}, record(), "inactive"),
        ({"valid_from": "2027-01-01T00:00:00Z"}, record(), "not_started"),
        ({"valid_until": "2026-01-01T00:00:00Z"}, record(), "ended"),
        ({"eligibility": {"segments": ["vip"]}}, record(traits={"segment": "lost"}), "segment"),
        ({"eligibility": {"segments": ["vip"]}}, record(), "segment"),  # no segment at all
        ({"eligibility": {"exclude_segments": ["lost"]}}, record(traits={"segment": "lost"}), "segment_excluded"),
        ({"eligibility": {"countries": ["FR"]}}, record(country="UK"), "country"),
        ({"eligibility": {"exclude_countries": ["UK"]}}, record(country="UK"), "country_excluded"),
        ({"eligibility": {"churn_risk": {"min": 0.5}}}, record(traits={"churn_risk": "0.2"}), "churn_risk"),
        ({"eligibility": {"churn_risk": {"min": 0.5}}}, record(), "churn_risk"),  # unknown churn risk
        ({"eligibility": {"cltv_90d": {"max": 100}}}, record(traits={"cltv_90d": "250.5"}), "cltv_90d"),
        ({"eligibility": {"owns_any": ["A", "B"]}}, record(owned={"C": NOW}), "owns_any"),
        ({"eligibility": {"owns_none": ["A"]}}, record(owned={"A": NOW - DAY}), "owns_none"),
        ({"eligibility": {"consent": ["profiling"]}}, record(), "consent:profiling"),
        ({}, record(accepted={"o": NOW - 300 * DAY}), "accepted"),
        ({"cooldown_days": 10}, record(dismissed={"o": NOW - 9 * DAY}), "cooldown"),
        ({"limit": {"count": 2, "days": 30}},
         record(contacts=[Contact(NOW - d * DAY, f"d{d}", "o", "email", "x") for d in (1, 20)]), "offer_limit"),
        ({"channels": {"email": {"subject": "only email"}}}, record(), "channel"),
    ],
)
def test_each_rule_removes_the_offer_and_names_itself(kw, rec, rule) -> None:
    d = run([offer("o", **kw), offer("z")], rec)
    assert [e.offer_id for e in d.entries] == ["z"]
    assert rule_of(d, "o") == rule
    quiet = run([offer("o", **kw), offer("z")], rec, explain=False)  # the path bulk decisions take
    assert [e.offer_id for e in quiet.entries] == ["z"] and quiet.excluded == []


@pytest.mark.parametrize(
    ("kw", "rec"),
    [
        ({"eligibility": {"segments": ["vip"]}}, record(traits={"segment": "vip"})),
        ({"eligibility": {"countries": ["UK", "FR"], "exclude_countries": ["DE"]}}, record(country="UK")),
        ({"eligibility": {"churn_risk": {"min": 0.5, "max": 0.9}, "cltv_90d": {"min": 10}}},
         record(traits={"churn_risk": "0.5", "cltv_90d": "10"})),  # bounds are inclusive
        ({"eligibility": {"owns_any": ["A"], "owns_none": ["B"]}}, record(owned={"A": NOW})),
        ({"eligibility": {"consent": ["profiling"]}}, record(traits={"consent_profiling": "granted"})),
        ({"cooldown_days": 10}, record(dismissed={"o": NOW - 11 * DAY})),
        ({"limit": {"count": 2, "days": 30}}, record(contacts=[Contact(NOW - 40 * DAY, "d", "o", "web", "x"),
                                                               Contact(NOW - DAY, "e", "o", "web", "x")])),
        ({"valid_from": "2026-01-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z"}, record()),
    ],
)
def test_customers_who_meet_the_rules_get_the_offer(kw, rec) -> None:
    d = run([offer("o", value=100, **kw)], rec)
    assert [e.offer_id for e in d.entries] == ["o"], d.excluded


def test_channel_consent_defaults_and_recorded_consent() -> None:
    email = [offer("o")]
    d = run(email, record(), channel="email")
    assert d.entries == [] and d.reasons == ["consent:email"] and rule_of(d, "o") == "consent:email"
    assert run(email, record(traits={"consent_email": "granted"}), channel="email").entries[0].offer_id == "o"
    assert run(email, record(traits={"consent_web": "denied"})).reasons == ["consent:web"]  # withdrawn on the web
    opt_in_web = replace(GREEDY, consent_defaults={**GREEDY.consent_defaults, "web": False})
    assert run(email, record(), policy=opt_in_web).entries == []


def test_caps_limit_the_answer_and_name_the_cap() -> None:
    policy = replace(GREEDY, caps=(Cap("total", 3, DAY), Cap("email", 1, 7 * DAY)))
    granted = {"consent_email": "granted"}
    offers = [offer(f"o{i}", value=10 - i) for i in range(4)]
    fresh = run(offers, record(traits=granted), channel="email", k=3, policy=policy)
    assert [e.offer_id for e in fresh.entries] == ["o0"] and fresh.reasons == ["cap:email"]  # 1 email a week
    web = run(offers, record(traits=granted), k=3, policy=policy)
    assert [e.offer_id for e in web.entries] == ["o0", "o1", "o2"]
    old = [Contact(NOW - 8 * DAY, "a", "o9", "email", "x")]  # outside the email week
    assert len(run(offers, record(traits=granted, contacts=old), channel="email", k=3, policy=policy).entries) == 1
    recent = [Contact(NOW - 3 * DAY, "a", "o9", "email", "x"), Contact(NOW - 3600, "b", "o9", "web", "x"),
              Contact(NOW - 7200, "c", "o8", "app", "x")]
    capped = run(offers, record(traits=granted, contacts=recent), channel="email", k=3, policy=policy)
    assert capped.entries == [] and capped.reasons == ["cap:email"]
    assert {x.rule for x in capped.excluded} == {"cap:email"}
    two_today = recent[1:]
    d = run(offers, record(contacts=two_today), k=3, policy=policy)  # total: 2 of 3 used today
    assert [e.offer_id for e in d.entries] == ["o0"] and d.reasons == ["cap:total"]
    assert {c.key: (c.used, c.remaining) for c in d.caps} == {"total": (2, 1)}


def test_arbitration_is_propensity_times_value_times_lever() -> None:
    # same prior propensity (no affinity): order by value x lever; lever 0 switches an offer to the bottom
    offers = [offer("cheap", value=5), offer("dear", value=20), offer("pushed", value=6, lever=4),
              offer("off", value=1000, lever=0)]
    d = run(offers, record(), k=4)
    assert [e.offer_id for e in d.entries] == ["pushed", "dear", "cheap", "off"]
    assert all(e.propensity == pytest.approx(0.05) for e in d.entries)  # base_rate, nothing known
    top = d.entries[0]
    assert top.score == pytest.approx(top.propensity * top.value * top.lever)
    # affinity raises the propensity of the offer on the customer's favourite item enough to beat a dearer one
    fan = record(items={"MUG": 30.0})
    d = run([offer("mug", value=10, items=["MUG"]), offer("dear", value=20)], fan, k=2)
    assert [e.offer_id for e in d.entries] == ["mug", "dear"]
    assert d.entries[0].propensity > 2 * d.entries[1].propensity
    assert "affinity:item:MUG" in d.entries[0].reasons


def test_prior_uses_item_then_category_affinity_and_the_segment_rate() -> None:
    pr = GREEDY.prior
    d = run([offer("i", items=["A"]), offer("c", categories=["home"]), offer("n")],
            record(traits={"segment": "vip"}, items={"A": 5.0}, categories={"home": 5.0}), k=3)
    p = {e.offer_id: e.propensity for e in d.entries}
    seg = pr.segments["vip"]
    a = 1 - np.exp(-1.0)  # affinity 5 at scale 5
    assert p["n"] == pytest.approx(seg)
    assert p["i"] == pytest.approx(seg + (pr.max_affinity_rate - seg) * a)
    assert p["c"] == pytest.approx(seg + (pr.max_affinity_rate - seg) * a * pr.category_weight)
    assert {e.source for e in d.entries} == {"prior"}


def test_model_applies_only_to_offers_its_spec_knows() -> None:
    model = tiny_model()
    assert model_applies(model, {"offer.type": "Coffee House"})
    assert not model_applies(model, {"offer.type": "Garden voucher"})
    assert not model_applies(model, {})
    coffee = offer("coffee", attributes={"type": "Coffee House"}, value=1)
    bar = offer("bar", attributes={"type": "Bar"}, value=1)
    retail = offer("retail", attributes={"type": "20% off lamps"}, value=1)
    d = run([coffee, bar, retail], record(), k=3, model=model)
    got = {e.offer_id: (e.source, e.propensity) for e in d.entries}
    assert got["coffee"] == ("model", pytest.approx(COFFEE_P))
    assert got["bar"] == ("model", pytest.approx(OTHER_P))
    assert got["retail"] == ("prior", pytest.approx(0.05))  # never scored as if the model knew it
    assert [e.offer_id for e in d.entries] == ["coffee", "bar", "retail"] and d.model == "recsvc-propensity@7"
    assert run([retail], record(), model=model).model is None  # the model was not used for this answer


def log_model(known: list[str], seen: dict | None = None) -> PropensityModel:
    """A model as training.offer_log exports it: offer.id one-hot over the offers with enough outcomes; one tree,
    +1 log-odds for a customer whose trait `plan` is "family" (whatever the offer)."""
    spec = FeatureSpec(categorical={"offer.id": known, "customer.plan": ["family", "single"]}, ordinal={}, numeric=[])
    col = len(known)  # customer.plan=family
    trees = TreeEnsemble(feature=np.array([col, -1, -1]), threshold=np.array([0.5, 0.0, 0.0]),
                         missing_left=np.array([True, False, False]), left=np.array([1, 0, 0]),
                         right=np.array([2, 0, 0]), value=np.array([0.0, -2.0, 1.0]), tree_start=np.array([0]),
                         baseline=0.0)
    return PropensityModel(spec, trees, ["offer.id"], seen or {})


def test_a_model_trained_on_the_log_scores_the_offers_it_knows_and_only_later_outcomes_move_it() -> None:
    family = record(traits={"segment": "vip", "plan": "family"})
    model = log_model(["old"], seen={"old": {"vip": (40, 8)}})
    counts = {"old": {"vip": [50, 11, 0]}, "new": {"vip": [5, 1, 0]}}
    d = run([offer("old"), offer("new")], family, k=2, model=model, counts=counts)
    e = {x.offer_id: x for x in d.entries}
    q = 1 / (1 + np.exp(-1.0))
    s = GREEDY.model_strength
    assert e["old"].prior == pytest.approx(q) and e["old"].source == "model+posterior"
    # 10 impressions and 3 accepts came after the model's training data: only they move its estimate
    assert (e["old"].impressions, e["old"].accepts) == (10, 3)
    assert e["old"].propensity == pytest.approx((s * q + 3) / (s + 10))
    assert e["new"].source == "prior+posterior" and "propensity:prior+posterior" in e["new"].reasons
    assert d.model == "recsvc-propensity@7"
    # what the decision saw of the customer is kept for the log, as the model saw it
    assert d.attributes is not None and d.attributes["customer.plan"] == "family"
    assert d.attributes["customer.segment"] == "vip" and d.attributes["context.channel"] == "web"
    # no outcomes since training: the model's estimate alone
    fresh = run([offer("old")], family, model=model, counts={"old": {"vip": [40, 8, 0]}}).entries[0]
    assert fresh.source == "model" and fresh.propensity == pytest.approx(q)
    single = run([offer("old")], record(traits={"segment": "vip", "plan": "single"}), model=model).entries[0]
    assert single.propensity == pytest.approx(1 / (1 + np.exp(2.0)))


def test_thompson_draws_weigh_a_learned_estimate_by_model_strength() -> None:
    """Exploring draws a learned model's estimate as a Beta worth model_strength impressions (narrow), a prior's as
    one worth prior_strength (wide)."""
    policy = replace(GREEDY, exploration=1.0, draws=4000)
    model = log_model(["old"], seen={"old": {"vip": (40, 8)}})
    catalog = compile_catalog({o.offer_id: o for o in [offer("old"), offer("new")]}, 1, policy, model, "m@1")
    bank = DrawBank(policy.draws)
    rec = record(traits={"segment": "vip", "plan": "family"})
    decide([(rec, "c1")], catalog, build_evidence({}, policy), "web", 1, NOW, policy, np.random.default_rng(1),
           bank=bank)
    q_model, q_prior = 1 / (1 + np.exp(-1.0)), policy.prior.segments["vip"]
    draws = bank.rows[: len(bank.index)]
    by_mean = sorted((float(r.mean()), float(r.std())) for r in draws)
    (m_prior, sd_prior), (m_model, sd_model) = by_mean
    assert m_model == pytest.approx(q_model, abs=0.01) and m_prior == pytest.approx(q_prior, abs=0.01)
    beta_sd = lambda q, n: np.sqrt(q * (1 - q) / (n + 1))  # noqa: E731
    assert sd_model == pytest.approx(beta_sd(q_model, policy.model_strength), rel=0.1)
    assert sd_prior == pytest.approx(beta_sd(q_prior, policy.prior_strength), rel=0.1)


def test_offer_attributes_the_model_sees() -> None:
    o = offer("mugs", value=4.5, categories=["home/kitchen"], attributes={"type": "voucher", "pct": 15})
    catalog = compile_catalog({"mugs": o}, 1, GREEDY, None, None)
    c = catalog.index["mugs"]
    assert c.log_attrs == {"offer.category.home/kitchen": 1, "offer.type": "voucher", "offer.pct": 15}
    assert c.attrs == {"offer.id": "mugs", "offer.value": 4.5, **c.log_attrs}


def test_a_decision_without_offers_keeps_no_attributes() -> None:
    d = run([offer("o", eligibility={"segments": ["vip"]})], record())
    assert d.entries == [] and d.attributes is None


def test_posterior_moves_the_estimate_towards_the_outcomes() -> None:
    n0 = GREEDY.prior_strength
    counts = {"o": {"vip": [80, 40, 10]}, "z": {"lost": [500, 0, 0]}}  # z's outcomes are in another segment
    d = run([offer("o"), offer("z")], record(traits={"segment": "vip"}), k=2, counts=counts)
    e = {x.offer_id: x for x in d.entries}
    q = GREEDY.prior.segments["vip"]
    # the segment rate itself moved with the 80 pooled vip impressions (segment_strength 50)
    q = (50 * q + 40) / (50 + 80)
    assert e["o"].prior == pytest.approx(q)
    assert e["o"].propensity == pytest.approx((n0 * q + 40) / (n0 + 80))
    assert e["o"].source == "prior+posterior" and (e["o"].impressions, e["o"].accepts) == (80, 40)
    assert e["z"].source == "prior" and e["z"].impressions == 0
    assert "outcomes:40/80" in e["o"].reasons


def test_cold_start_customer_gets_an_answer() -> None:
    d = run([offer("o", value=3), offer("v", eligibility={"segments": ["vip"]})], record("ghost", known=False), k=2)
    assert [e.offer_id for e in d.entries] == ["o"] and rule_of(d, "v") == "segment"
    assert d.entries[0].propensity == pytest.approx(0.05) and d.segment == "unknown"


def test_greedy_picks_are_logged_with_probability_one() -> None:
    d = run([offer("a", value=2), offer("b")], record(), k=2)
    assert [e.p for e in d.entries] == [1.0, 1.0] and d.policy == "greedy"
    assert d.candidates == (["a", "b"], [pytest.approx(0.1), pytest.approx(0.05)])


def test_logged_probabilities_match_how_often_the_policy_chooses() -> None:
    """Exploration share 0.3 over three offers with different posteriors: the logged p of the first choice is,
    on average, the frequency with which the policy makes that choice."""
    policy = replace(GREEDY, exploration=0.3, draws=400)
    offers = [offer("a", value=1.0), offer("b", value=0.9), offer("new", value=0.8)]
    counts = {"a": {"unknown": [200, 20, 0]}, "b": {"unknown": [50, 3, 0]}}
    catalog = compile_catalog({o.offer_id: o for o in offers}, 1, policy, None, None)
    evidence = build_evidence(counts, policy)
    rng = np.random.default_rng(42)
    n = 3000
    chosen: dict[str, int] = {}
    logged: dict[str, list[float]] = {}
    for _ in range(n):
        d = decide([(record(), "c1")], catalog, evidence, "web", 1, NOW, policy, rng)[0]
        top = d.entries[0]
        chosen[top.offer_id] = chosen.get(top.offer_id, 0) + 1
        logged.setdefault(top.offer_id, []).append(top.p)
    assert set(chosen) == {"a", "b", "new"}  # exploration reaches every offer
    for oid, times in chosen.items():
        freq = times / n
        p = float(np.mean(logged[oid]))  # the same context every time: p is the same up to Monte Carlo noise
        assert abs(freq - p) < 0.03, (oid, freq, p)
    greedy = max(chosen, key=chosen.get)
    assert greedy == "a" and min(logged["a"]) >= 0.7  # (1 - e) + e * P(Thompson also picks it)
    # the decision's own draw is among the Monte Carlo draws: an explored pick never logs p = 0
    assert min(min(v) for v in logged.values()) > 0


def test_thompson_ranks_beyond_the_first_are_logged_too() -> None:
    policy = replace(GREEDY, exploration=1.0, draws=300)
    d = run([offer("a"), offer("b"), offer("c")], record(), k=3, policy=policy, seed=3)
    assert d.policy == "thompson" and [e.rank for e in d.entries] == [0, 1, 2]
    assert all(0 < e.p <= 1 for e in d.entries) and "explore:thompson" in d.entries[0].reasons


def test_a_shared_draw_bank_logs_exact_frequencies() -> None:
    """The service reuses Thompson draws (DrawBank): given the bank, the logged p of each pick is not an estimate but
    the exact probability, so it is the same every time and matches how often the pick happens."""
    policy = replace(GREEDY, exploration=0.5, draws=40)
    offers = [offer("a", value=1.0), offer("b", value=0.95), offer("c", value=0.9)]
    catalog = compile_catalog({o.offer_id: o for o in offers}, 1, policy, None, None)
    evidence = build_evidence({"a": {"unknown": [30, 4, 0]}}, policy)
    bank = DrawBank(policy.draws)
    rng = np.random.default_rng(9)
    n = 6000
    seen: dict[str, list[float]] = {}
    for _ in range(n):
        d = decide([(record(), "c1")], catalog, evidence, "web", 1, NOW, policy, rng, bank=bank)[0]
        seen.setdefault(d.entries[0].offer_id, []).append(d.entries[0].p)
    assert set(seen) == {"a", "b", "c"}
    for oid, ps in seen.items():
        assert max(ps) - min(ps) < 1e-12, oid  # one bank, one exact probability per offer
        assert abs(len(ps) / n - ps[0]) < 0.02, (oid, len(ps) / n, ps[0])
    assert sum(ps[0] for ps in seen.values()) == pytest.approx(1.0)  # the first choice's law sums to one
    assert len(bank.index) == 3  # one posterior per offer: drawn once, reused by every decision


# ---- the bulk paths are the reference paths ----


def random_catalog(rng: np.random.Generator) -> list:
    segs, countries, items = ["vip", "lost", "new"], ["UK", "FR", "DE"], ["A", "B", "C", "D"]
    out = []
    for i in range(int(rng.integers(2, 14))):
        kw: dict = {"value": float(rng.choice([1.0, 2.0, 5.0])), "lever": float(rng.choice([0.0, 1.0, 1.5]))}
        elig: dict = {}
        if rng.random() < 0.3:
            elig["segments"] = list(rng.choice(segs, size=int(rng.integers(1, 3)), replace=False))
        elif rng.random() < 0.2:
            elig["exclude_segments"] = [str(rng.choice(segs))]
        if rng.random() < 0.2:
            elig["countries"] = [str(rng.choice(countries))]
        if rng.random() < 0.3:
            elig["churn_risk"] = {"min": float(rng.choice([0.2, 0.5]))}
        if rng.random() < 0.2:
            elig["cltv_90d"] = {"max": float(rng.choice([50.0, 500.0]))}
        if rng.random() < 0.3:
            elig["owns_any"] = [str(rng.choice(items[:2]))]
        if rng.random() < 0.3:
            elig["owns_none"] = [str(rng.choice(items[2:]))]
        if elig:
            kw["eligibility"] = elig
        if rng.random() < 0.4:
            kw["limit"] = {"count": int(rng.integers(1, 3)), "days": 30}
        if rng.random() < 0.4:
            kw["cooldown_days"] = float(rng.choice([1.0, 10.0]))
        if rng.random() < 0.5:
            kw["items"] = [str(rng.choice(items))]
        out.append(offer(f"o{i:02d}", **kw))
    return out


def random_record(rng: np.random.Generator, person: str, offer_ids: list[str]):  # type: ignore[no-untyped-def]
    traits = {"consent_email": str(rng.choice(["granted", "denied"]))}
    if rng.random() < 0.8:
        traits["segment"] = str(rng.choice(["vip", "lost", "new"]))
    if rng.random() < 0.7:
        traits["churn_risk"] = str(round(float(rng.random()), 2))
    if rng.random() < 0.6:
        traits["cltv_90d"] = str(rng.choice(["10", "100", "1000", "n/a"]))
    some = lambda: [str(x) for x in rng.choice(offer_ids, size=int(rng.integers(0, 3)))]  # noqa: E731
    contacts = [Contact(NOW - float(rng.choice([0.5, 3, 40])) * DAY, f"d{j}", o, str(rng.choice(["web", "email"])), "x")
                for j, o in enumerate(some())]
    return record(person, traits=traits, country=str(rng.choice(["UK", "FR", "DE"])),
                  items={str(i): float(rng.choice([1.0, 8.0])) for i in rng.choice(["A", "B", "C", "D"], size=2)},
                  owned={str(i): NOW - DAY for i in rng.choice(["A", "B", "C", "D"], size=int(rng.integers(0, 3)))},
                  contacts=sorted(contacts, key=lambda c: c.ts),
                  accepted={o: NOW - DAY for o in some()}, dismissed={o: NOW - float(rng.choice([2, 20])) * DAY
                                                                     for o in some()},
                  version=int(rng.integers(0, 3)), known=bool(rng.random() < 0.95))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_bulk_decisions_are_the_explained_decisions(seed: int) -> None:
    """The bulk path (explain=False: eligibility by exclusion sets, rankings of the draws for the whole batch at once)
    decides exactly as the explained one (rule by rule, as ?explain=true lists them), on random catalogs and ledgers."""
    rng = np.random.default_rng(seed)
    offers = random_catalog(rng)
    policy = replace(GREEDY, exploration=float(rng.choice([0.0, 0.3, 1.0])), draws=int(rng.integers(5, 60)),
                     caps=(Cap("total", int(rng.integers(1, 4)), DAY), Cap("email", 1, 7 * DAY)))
    catalog = compile_catalog({o.offer_id: o for o in offers}, 1, policy, None, None)
    counts = {o.offer_id: {"vip": [int(rng.integers(0, 50)), int(rng.integers(0, 5)), 0]} for o in offers[:3]}
    evidence = build_evidence(counts, policy)
    people = [(random_record(rng, f"p{i}", [o.offer_id for o in offers]), f"p{i}") for i in range(12)]
    channel, k = str(rng.choice(["web", "email"])), int(rng.integers(1, 4))
    for rec, cid in people:
        bulk = screen(catalog, rec, cid, channel, k, NOW, policy)
        told = screen(catalog, rec, cid, channel, k, NOW, policy, explain=True)
        assert [c.offer_id for c in bulk.eligible] == [c.offer_id for c in told.eligible]
        assert list(bulk.positions) == [c.position for c in told.eligible] == list(told.positions)
        assert (bulk.k, bulk.reasons, bulk.segment) == (told.k, told.reasons, told.segment)
        assert bulk.excluded == () and {x.offer_id for x in told.excluded} | {c.offer_id for c in told.eligible} == \
            {o.offer_id for o in offers}
    runs = [decide(people, catalog, evidence, channel, k, NOW, policy, np.random.default_rng(seed), explain=explain,
                   bank=DrawBank(policy.draws)) for explain in (False, True)]
    for a, b in zip(*runs):
        assert [(e.offer_id, e.rank, e.score, e.p, e.propensity) for e in a.entries] == \
            [(e.offer_id, e.rank, e.score, e.p, e.propensity) for e in b.entries]
        assert (a.candidates, a.policy, a.reasons) == (b.candidates, b.policy, b.reasons)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_batch_rankings_are_the_per_customer_rankings(seed: int) -> None:
    """DrawBank.rank_many (many customers at once, in chunks) gives each customer the ranking that ranking() computes
    alone: the same top k per draw (ties to the offer listed first: zero draws, zero levers, equal rows) and the same
    shares."""
    rng = np.random.default_rng(seed)
    draws, n_rows = int(rng.integers(1, 40)), int(rng.integers(2, 30))
    rows = rng.beta(0.5, 3.0, size=(n_rows, draws)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.2] = 0.0
    rows[rng.integers(0, n_rows, size=n_rows // 3)] = rows[0]
    keys, weights = [], []
    for _ in range(int(rng.integers(1, 40))):
        n = int(rng.integers(2, 12))
        keys.append((rng.integers(0, n_rows, size=n).astype(np.int64).tobytes(), int(rng.integers(1, 6))))
        weights.append(rng.choice([0.0, 1.0, 2.5, 10.0], size=n))
    reference, batch = DrawBank(draws), DrawBank(draws)
    reference.rows = batch.rows = rows
    budget = offers_module.RANK_BUDGET
    offers_module.RANK_BUDGET = int(rng.choice([1, 4 * draws * 24, budget]))  # one customer, a few, all per chunk
    try:
        batch.rank_many(keys, weights)
    finally:
        offers_module.RANK_BUDGET = budget
    for key, w in zip(keys, weights):
        top, share = reference.ranking(key[0], w, key[1])
        got_top, got_share = batch.rankings[key]
        assert np.array_equal(got_top, top) and got_share == share
