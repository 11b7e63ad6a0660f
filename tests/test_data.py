"""prepare_data promises: deterministic digits split, npz of any feature shape, recorded ids."""

import numpy as np
from sklearn.datasets import load_digits

from dmflow.core.io import load_npz
from dmflow.data.prepare import DATA_NAMES, prepare_data
from dmflow.data.sizing import dataset_sizes
from dmflow.stages.data import prepare_data as prepare_data_stage


def test_digits_split_is_deterministic_and_standardised(tmp_path):
    cfg = {"name": "digits", "num_train": 1000, "num_targets": None, "standardize": True}
    a = prepare_data_stage(cfg, 0, tmp_path / "a.npz")
    b = load_npz(tmp_path / "a.npz")
    assert a["X_train"].shape == (1000, 8, 8) and a["X_target"].shape == (797, 8, 8)
    assert np.array_equal(prepare_data(cfg, 0)["train_ids"], b["train_ids"])
    assert not np.array_equal(prepare_data(cfg, 1)["train_ids"], b["train_ids"])
    assert not set(b["train_ids"]) & set(b["target_ids"])
    np.testing.assert_allclose(b["X_train"].reshape(1000, -1).mean(0), 0, atol=1e-5)
    assert int(b["num_classes"]) == 10 and b["y_train"].dtype == np.int64
    assert dataset_sizes(cfg) == (1000, 797)


def test_npz_with_image_shaped_features_and_a_target_sample(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img.npz"
    np.savez(
        path,
        X_train=rng.random((50, 3, 4, 4)),
        y_train=rng.integers(0, 3, 50).astype(np.int32),
        X_test=rng.random((30, 3, 4, 4)),
        y_test=rng.integers(0, 3, 30),
    )
    cfg = {"name": "npz", "path": str(path), "num_targets": 12, "standardize": False}
    out = prepare_data(cfg, seed=5)
    assert out["X_train"].shape == (50, 3, 4, 4) and out["X_target"].shape == (12, 3, 4, 4)
    assert len(np.unique(out["target_ids"])) == 12 and np.all(np.diff(out["target_ids"]) > 0)
    with np.load(path) as f:
        np.testing.assert_allclose(out["X_target"], f["X_test"][out["target_ids"]].astype(np.float32))
        np.testing.assert_array_equal(out["y_target"], f["y_test"][out["target_ids"]])
    assert np.array_equal(prepare_data(cfg, seed=5)["target_ids"], out["target_ids"])
    assert dataset_sizes(cfg) == (50, 12)


def test_the_source_values_are_kept_beside_the_models_features(tmp_path):
    """X_*_raw: the features before scaling and standardisation (galleries, leakage), uint8 where the source's are."""
    out = prepare_data({"name": "digits", "num_train": 1000, "num_targets": 50, "standardize": True}, 0)
    assert tuple(out) == DATA_NAMES
    images = load_digits().images
    np.testing.assert_array_equal(out["X_train_raw"], images[out["train_ids"]].astype(np.float32))
    np.testing.assert_array_equal(out["X_target_raw"], images[out["target_ids"]].astype(np.float32))
    assert out["X_train_raw"].min() == 0 and out["X_train_raw"].max() == 16
    rng = np.random.default_rng(0)
    path = tmp_path / "img.npz"
    x = rng.integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    np.savez(path, X_train=x[:12], y_train=np.arange(12) % 2, X_test=x[12:], y_test=np.arange(8) % 2)
    out = prepare_data({"name": "npz", "path": str(path), "num_targets": None, "standardize": True}, 0)
    assert out["X_train_raw"].dtype == np.uint8 and np.array_equal(out["X_train_raw"], x[:12])
    assert out["X_target_raw"].dtype == np.uint8 and np.array_equal(out["X_target_raw"], x[12:])
