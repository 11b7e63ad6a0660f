"""The arrays of ``data.npz``: features scaled and standardised, targets chosen, ids kept.

Features are standardised with training-set statistics when asked (per channel for
images, per feature otherwise); the test examples become the targets, optionally a
deterministic sample of them, and their ids are recorded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dmflow.data.sources import load_source


def choose_targets(num_test: int, num_targets: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the test examples used as targets (all, or a deterministic sample)."""
    if num_targets is None or num_targets >= num_test:
        return np.arange(num_test)
    rng = np.random.default_rng(np.random.SeedSequence((seed, 11)))
    return np.sort(rng.choice(num_test, size=num_targets, replace=False))


def standardize(x_train: np.ndarray, x_target: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance with training-set statistics, per channel (images) or per feature.

    float32 arrays in and out. The statistics are float32 (so existing runs keep their
    exact data), unless float32 overflows on them (features beyond ~1e19, whose squares
    pass float32's range): then everything is computed in float64, instead of dividing
    by an infinite std and zeroing the features.
    """
    axes = (0, 2, 3) if per_channel else (0,)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = x_train.mean(axis=axes, keepdims=True), x_train.std(axis=axes, keepdims=True)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        x_train, x_target = x_train.astype(np.float64), x_target.astype(np.float64)
        mean, std = x_train.mean(axis=axes, keepdims=True), x_train.std(axis=axes, keepdims=True)
    std[std == 0] = 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_target - mean) / std).astype(np.float32)


def prepare_data(dataset: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The arrays of ``data.npz``: float32 features, int64 labels, ids, class count."""
    xtr, ytr, xte, yte, train_ids, test_ids = load_source(dataset, seed)
    targets = choose_targets(len(xte), dataset.get("num_targets"), seed)
    is_image_source = dataset["name"] in ("cifar10", "images")
    scale = np.float32(1 / 255) if is_image_source else np.float32(1)
    xtr, xte = xtr.astype(np.float32) * scale, xte[targets].astype(np.float32) * scale
    if dataset.get("standardize", True):
        xtr, xte = standardize(xtr, xte, per_channel=is_image_source)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    return {
        "X_train": xtr.astype(np.float32),
        "y_train": ytr.astype(np.int64),
        "X_target": xte.astype(np.float32),
        "y_target": yte[targets].astype(np.int64),
        "train_ids": np.asarray(train_ids, dtype=np.int64),
        "target_ids": np.asarray(test_ids, dtype=np.int64)[targets],
        "num_classes": np.int64(num_classes),
    }
