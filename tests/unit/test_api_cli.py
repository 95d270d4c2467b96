"""The `recsvc` command, run in-process with the embedded store: import + drain into a temporary offline log,
usage and configuration errors as exit status 2, `train` forwarded lazily."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from features.offline_log import read_events
from recsvc import cli


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with the embedded store and a temporary data dir."""
    for var in ("RECSVC_REDIS_URL", "RECSVC_API_KEYS", "RECSVC_API_KEYS_FILE", "RECSVC_OPEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECSVC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECSVC_LOG_JSON", "false")
    return tmp_path / "data"


def test_import_events_into_the_embedded_store_drains_to_parquet(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"event_id": "e1", "type": "view", "channel": "web", "customer_id": "c1", "item_id": "A",
         "timestamp": "2011-12-01T10:00:00Z"},
        {"event_id": "e2", "type": "purchase", "channel": "store", "customer_id": "c1", "item_id": "B",
         "timestamp": "2011-12-01T11:00:00Z", "value": 9.5, "quantity": 2, "country": "France"},
        {"event_id": "e3", "type": "view", "channel": "teleport", "customer_id": "c2", "item_id": "A"},  # bad
        {"event_id": "e1", "type": "view", "channel": "web", "customer_id": "c1", "item_id": "A",
         "timestamp": "2011-12-01T10:00:00Z"},  # a replay
    ]
    src = tmp_path / "events.ndjson"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cli.main(["import", "events", str(src), "--batch-size", "2"]) == 0
    out = capsys.readouterr()
    assert "4 rows -> 3 events (2 accepted, 1 already there)" in out.out
    assert "embedded in-process store" in out.err  # the store warning reaches the operator
    table = read_events(env)
    assert table.column("event_id").to_pylist() == ["e1", "e2"]
    assert table.column("country").to_pylist() == [None, "France"]
    assert table.column("quantity").to_pylist() == [None, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "events", "does-not-exist.ndjson"], "is not a file"),
        (["serve", "--workers", "2"], "needs RECSVC_REDIS_URL"),
        (["serve"], "refusing to start: no API keys configured"),
    ],
)
def test_usage_and_configuration_errors_exit_2(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_unsupported_import_file_type_exits_2(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "events.xlsx"
    src.write_bytes(b"PK\x03\x04")
    assert cli.main(["import", "events", str(src)]) == 2
    assert "unsupported file type" in capsys.readouterr().err


def test_bad_number_in_the_environment_exits_2(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECSVC_REDIS_MAX_CONNECTIONS", "many")
    assert cli.main(["drain"]) == 2
    assert "refusing to start" in capsys.readouterr().err


def test_drain_once_on_an_empty_store(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["drain"]) == 0
    assert capsys.readouterr().out.strip()  # the drain summary


def test_train_forwards_argv_and_is_imported_only_then(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("training.cli")
    fake.main = lambda argv: seen.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.cli", fake)
    assert cli.main(["train", "segments", "--quick"]) == 3
    assert seen == [["segments", "--quick"]]


def test_train_without_training_deps(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "training.cli", None)  # import now raises ImportError
    assert cli.main(["train", "all"]) == cli.TRAIN_MISSING
    assert "needs the training extras" in capsys.readouterr().err


def test_python_dash_m_and_serving_imports_stay_light() -> None:
    code = ("import sys, recsvc.cli, recsvc.app; "
            "heavy = [m for m in ('training', 'mlflow', 'implicit', 'pandas', 'lightfm') if m in sys.modules]; "
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    r = subprocess.run([sys.executable, "-m", "recsvc", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "demo" in r.stdout


def test_demo_catalogs_are_valid() -> None:
    """The sample offer and content catalogs the demo loads pass the same validation as the API."""
    from features.content import decode_content
    from features.offers import decode_offers
    from recsvc.cli import DEMO_DIR

    offers = decode_offers((DEMO_DIR / "offers.json").read_bytes())
    content, _ = decode_content((DEMO_DIR / "content.json").read_bytes())
    assert len(offers) == 50 and len({o.offer_id for o in offers}) == 50
    assert {"hero", "email_block"} <= {s for c in content for s in c.slots}
