"""The offer policy file (recsvc/offers.toml): the shipped file loads, every setting is read, and a bad file refuses
to start the service with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.app import create_app
from recsvc.offer_policy import (
    DAY,
    DEFAULT_OFFERS_CONFIG,
    Cap,
    OfferConfigError,
    consent_value,
    load_policy,
    parse_policy,
)
from recsvc.security import ConfigError
from recsvc.settings import Settings


def test_shipped_file_loads_with_documented_defaults() -> None:
    p = load_policy(DEFAULT_OFFERS_CONFIG)
    assert p.exploration == 0.1 and p.draws == 200 and p.prior_strength == 20
    assert p.model_strength == 200
    assert Cap("total", 3, DAY) in p.caps and Cap("email", 1, 7 * DAY) in p.caps
    assert p.consent_defaults["email"] is False and p.consent_defaults["web"] is True
    assert p.prior.segments["champions"] == pytest.approx(0.09) and p.prior.segments["at risk"] == pytest.approx(0.04)
    assert [c.key for c in p.caps_for("email")] == ["total", "email"] and [c.key for c in p.caps_for("web")] == ["total"]


def test_every_setting_is_read() -> None:
    p = parse_policy({
        "policy": {"exploration": 0.25, "draws": 50, "prior_strength": 5, "max_retries": 2, "refresh_seconds": 0,
                   "seed": 7, "default_cooldown_days": 3, "explain_limit": 10, "model_strength": 50},
        "caps": {"total": {"max": 5, "days": 2}, "channels": {"sms": {"max": 0, "days": 30}}},
        "consent": {"defaults": {"email": "granted", "web": "denied"}},
        "prior": {"base_rate": 0.02, "max_affinity_rate": 0.5, "affinity_scale": 2, "category_weight": 0.25,
                  "segment_strength": 10, "segments": {"vip": 0.3}},
        "export": {"batch": 100, "resume_days": 1},
    })
    assert (p.exploration, p.draws, p.prior_strength, p.max_retries, p.refresh_s, p.seed) == (0.25, 50, 5, 2, 0, 7)
    assert p.default_cooldown_days == 3 and p.explain_limit == 10 and p.model_strength == 50
    # a learned model is worth at least the prior: a stronger prior raises the model's default with it
    assert parse_policy({"policy": {"prior_strength": 500}}).model_strength == 500
    assert p.caps == (Cap("total", 5, 2 * DAY), Cap("sms", 0, 30 * DAY))
    assert p.consent_defaults["email"] is True and p.consent_defaults["web"] is False
    assert p.consent_defaults["app"] is True  # not named: the built-in default stays
    assert p.prior.base_rate == 0.02 and p.prior.segments == {"vip": 0.3} and p.prior.category_weight == 0.25
    assert p.export_batch == 100 and p.export_ttl_days == 1


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"polcy": {}}, "polcy"),
        ({"policy": {"explore": 0.1}}, "policy.explore"),
        ({"policy": {"exploration": 1.5}}, "policy.exploration"),
        ({"policy": {"draws": 0}}, "policy.draws"),
        ({"policy": {"model_strength": 10, "prior_strength": 20}}, "policy.model_strength"),
        ({"policy": {"draws": 10.5}}, "policy.draws"),
        ({"caps": {"channels": {"emial": {"max": 1, "days": 7}}}}, "caps.channels.emial"),
        ({"caps": {"total": {"max": 1}}}, "caps.total"),
        ({"caps": {"total": {"max": 1, "days": 1, "per": "day"}}}, "caps.total.per"),
        ({"caps": {"total": {"max": -1, "days": 1}}}, "caps.total.max"),
        ({"consent": {"defaults": {"email": "maybe"}}}, "consent.defaults.email"),
        ({"prior": {"segments": {"vip": 2}}}, "prior.segments.vip"),
        ({"prior": {"base": 0.1}}, "prior.base"),
        ({"export": {"batch": 0}}, "export.batch"),
    ],
)
def test_bad_settings_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(OfferConfigError, match=key.replace(".", r"\.")):
        parse_policy(doc)


def test_a_bad_file_refuses_to_start_the_service(tmp_path: Path) -> None:
    bad = tmp_path / "offers.toml"
    bad.write_text("[caps.channels]\nfax = { max = 1, days = 1 }\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="caps.channels.fax"):
        create_app(Settings(load_models=False, api_keys="k=admin", log_json=False, offers_config=bad))
    bad.write_text("[policy\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")


def test_consent_values() -> None:
    p = load_policy()
    assert consent_value({"consent_email": "granted"}, "email", p)
    assert not consent_value({"consent_email": "withdrawn"}, "email", p)
    assert not consent_value({"consent_email": "garbage"}, "email", p)  # unreadable counts as denied
    assert consent_value({}, "web", p) and not consent_value({}, "email", p)
    assert not consent_value({}, "profiling", p)  # purposes other than channels default to denied
