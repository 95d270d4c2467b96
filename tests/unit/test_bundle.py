"""The artifact format: round trip, corruption refused, no pickle; a re-rank recommender rebuilt from its bundle
scores exactly as the trained one, with numpy alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.bundle import CorruptBundle, load_bundle, save_bundle
from features.propensity_model import TreeEnsemble
from features.scoring import FEATURES, Csr, History, RerankModel, recommend


def test_round_trip_keeps_arrays_ids_and_meta(tmp_path: Path) -> None:
    arrays = {"x": np.arange(5.0), "m": np.eye(3, dtype=np.float32), "i": np.array([3, 1], dtype=np.int64)}
    save_bundle(tmp_path, arrays, {"item_ids": ["a", "杯"], "metrics": {"ndcg": np.float64(0.5)}})
    out, meta = load_bundle(tmp_path)
    assert set(out) == {"x", "m", "i"}
    for k in arrays:
        assert out[k].dtype == arrays[k].dtype and np.array_equal(out[k], arrays[k])
    assert meta["item_ids"] == ["a", "杯"] and meta["metrics"] == {"ndcg": 0.5} and meta["format_version"] == 1
    assert len(meta["files"]["arrays.npz"]) == 64


@pytest.mark.parametrize("target", ["arrays.npz", "meta.json"])
def test_corrupted_file_is_refused(tmp_path: Path, target: str) -> None:
    save_bundle(tmp_path, {"x": np.arange(100.0)}, {"item_ids": ["a"]})
    path = tmp_path / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBundle, match=target):
        load_bundle(tmp_path)


def test_missing_or_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptBundle, match="manifest"):
        load_bundle(tmp_path)
    save_bundle(tmp_path / "b", {"x": np.arange(3)}, {})
    (tmp_path / "b" / "arrays.npz").unlink()
    with pytest.raises(CorruptBundle, match="missing"):
        load_bundle(tmp_path / "b")
    # a consistent manifest over a meta.json whose own record of the arrays differs
    save_bundle(tmp_path / "c", {"x": np.arange(3)}, {})
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["files"]["arrays.npz"] = "0" * 64
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    import hashlib

    manifest["meta.json"] = hashlib.sha256((tmp_path / "c" / "meta.json").read_bytes()).hexdigest()
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptBundle, match="disagrees"):
        load_bundle(tmp_path / "c")


def test_pickle_is_never_needed(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ids"):
        save_bundle(tmp_path / "o", {"ids": np.array(["a", None], dtype=object)}, {})
    with pytest.raises(TypeError, match="meta"):
        save_bundle(tmp_path / "p", {}, {"when": object()})


def stump(feature: int, threshold: float, left: float, right: float) -> TreeEnsemble:
    """One split: x[feature] <= threshold -> left value, else right value."""
    return TreeEnsemble(np.array([feature, -1, -1]), np.array([threshold, 0.0, 0.0]), np.array([False, False, False]),
                        np.array([1, 0, 0]), np.array([2, 0, 0]), np.array([0.0, left, right]), np.array([0]), 0.0)


def planted_model() -> RerankModel:
    """Six items; items 0-2 are each other's neighbours, as are 3-5. 'all' trees favour what was bought most;
    'new' trees favour the item-kNN score."""
    n = 6
    dense = np.zeros((n, n))
    for block in (range(0, 3), range(3, 6)):
        for i in block:
            for j in block:
                if i != j:
                    dense[i, j] = 1.0
    indptr = np.r_[0, np.cumsum((dense > 0).sum(axis=1))]
    indices = np.concatenate([np.nonzero(r)[0] for r in dense])
    sim = Csr(indptr, indices, dense[dense > 0], (n, n))
    rng = np.random.default_rng(0)
    bought_log = FEATURES.index("bought_log")
    knn = FEATURES.index("knn")
    return RerankModel(sim, rng.normal(size=(n, 4)).astype(np.float32), np.tile(np.linspace(1, 2, n), (5, 1)).T,
                       np.ones((1, n)), stump(bought_log, 1.0, 0.0, 1.0), stump(knn, 0.5, 0.0, 1.0), n_cf=6, n_pop=1)


def history() -> History:
    purchases = np.array([[3.0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0, 2.0, 0]])
    last = np.where(purchases > 0, 1000.0, 0.0)
    return History(interest=purchases.copy(), purchases=purchases, last_purchase=last, country=np.array([0, -1]))


def test_rerank_model_round_trip_scores_identically(tmp_path: Path) -> None:
    model = planted_model()
    h = history()
    meta = {"item_ids": [f"i{i}" for i in range(6)], "scorer": model.params()}
    save_bundle(tmp_path, model.arrays(), meta)
    arrays, meta2 = load_bundle(tmp_path)
    again = RerankModel.from_bundle(arrays, meta2)
    for new_only in (False, True):
        assert np.allclose(model.score(h, 2000.0, new_only), again.score(h, 2000.0, new_only))
    # planted answers: the customer's most-bought item first; for new items, a neighbour of what they bought
    assert recommend(again, h, 2000.0, k=1)[:, 0].tolist() == [0, 4]
    new = recommend(again, h, 2000.0, k=2, new_only=True)
    assert new[0, 0] == 2 and not {0, 1} & set(new[0].tolist())  # 2: the only unbought neighbour of 0 and 1
    assert 4 not in new[1].tolist()
    assert new[1, 0] in (3, 5)


def test_rerank_model_refuses_a_foreign_bundle(tmp_path: Path) -> None:
    model = planted_model()
    with pytest.raises(ValueError, match="scorer"):
        RerankModel.from_bundle(model.arrays(), {"item_ids": ["a"] * 6})
    params = {**model.params(), "features": ["something_else"]}
    with pytest.raises(ValueError, match="features"):
        RerankModel.from_bundle(model.arrays(), {"item_ids": ["a"] * 6, "scorer": params})
    arrays = model.arrays()
    del arrays["item_factors"]
    with pytest.raises(ValueError, match="item_factors"):
        RerankModel.from_bundle(arrays, {"item_ids": ["a"] * 6, "scorer": model.params()})
    with pytest.raises(ValueError, match="History"):
        model.score(History(np.zeros((1, 5)), np.zeros((1, 5)), np.zeros((1, 5)), np.array([0])), 0.0)
    with pytest.raises(ValueError, match="k"):
        recommend(model, history(), 0.0, k=0)
