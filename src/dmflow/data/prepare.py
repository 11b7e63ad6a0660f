"""The arrays of ``data.npz``: features scaled and standardised, targets chosen, ids kept.

Features are standardised with training-set statistics when asked (per channel for
images, per feature otherwise); the test examples become the targets, optionally a
deterministic sample of them, and their ids are recorded. The features are also kept
as the source gave them (``X_train_raw``, ``X_target_raw``), for what people look at:
the galleries, and the leakage audit's input-space similarity.

``DATA_ARRAYS`` declares every array of the file (the README's *Outputs* table states
the same list, and a test holds the two together).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dmflow.data.sources import IMAGE_SOURCES, load_source

DATA_ARRAYS = (
    ("X_train", "float32 [n, ...]: the training features the models see (scaled, standardised when asked)"),
    ("y_train", "int64 [n]: training labels 0..C-1"),
    ("X_target", "float32 [T, ...]: the targets' features, as the models see them"),
    ("y_target", "int64 [T]: the targets' labels"),
    (
        "X_train_raw",
        "[n, ...]: the training features in the source's values, before any scaling or standardisation "
        "(uint8 where the source's are, float32 otherwise): galleries and the leakage similarity",
    ),
    ("X_target_raw", "[T, ...]: the targets' features in the source's values, likewise"),
    ("train_ids", "int64 [n]: each training example's index in the source's training set"),
    ("target_ids", "int64 [T]: each target's index in the source's test set"),
    ("num_classes", "int64: the number of classes C"),
)
DATA_NAMES = tuple(name for name, _ in DATA_ARRAYS)


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
    is_image_source = dataset["name"] in IMAGE_SOURCES
    raw_dtype = np.uint8 if xtr.dtype == np.uint8 else np.float32
    raw_train, raw_target = xtr.astype(raw_dtype), xte[targets].astype(raw_dtype)
    scale = np.float32(1 / 255) if is_image_source else np.float32(1)
    xtr, xte = xtr.astype(np.float32) * scale, xte[targets].astype(np.float32) * scale
    if dataset.get("standardize", True):
        xtr, xte = standardize(xtr, xte, per_channel=is_image_source)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    arrays = {
        "X_train": xtr.astype(np.float32),
        "y_train": ytr.astype(np.int64),
        "X_target": xte.astype(np.float32),
        "y_target": yte[targets].astype(np.int64),
        "X_train_raw": raw_train,
        "X_target_raw": raw_target,
        "train_ids": np.asarray(train_ids, dtype=np.int64),
        "target_ids": np.asarray(test_ids, dtype=np.int64)[targets],
        "num_classes": np.int64(num_classes),
    }
    assert tuple(arrays) == DATA_NAMES
    return arrays


def source_features(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(training, target) features in the source's values: ``X_train_raw``, ``X_target_raw``.

    A ``data.npz`` written before dmflow kept them has only the model's features; those
    stand in (standardised values, so its galleries look as they did).
    """
    if "X_train_raw" in arrays and "X_target_raw" in arrays:
        return arrays["X_train_raw"], arrays["X_target_raw"]
    return arrays["X_train"], arrays["X_target"]


def as_images(x: np.ndarray, image_shape: Sequence[int] | None = None) -> np.ndarray | None:
    """Samples ``x`` [N, ...] as images [N, C, H, W] (C = 1 or 3), or None when they are not images.

    With ``image_shape`` (``dataset.image_shape``: ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``)
    each sample is first reshaped to it. A sample of shape [H, W] is greyscale; [C, H, W]
    or [H, W, C] with C = 1 or 3 is an image with channels first or last (first when the
    leading axis has 1 or 3 entries and the last one does not); anything else is not one.
    """
    x = np.asarray(x)
    shape = tuple(image_shape) if image_shape else x.shape[1:]
    if image_shape:
        x = x.reshape(len(x), *shape)
    if len(shape) == 2:
        return x[:, None]
    if len(shape) == 3 and shape[0] in (1, 3) and shape[-1] not in (1, 3):
        return x
    if len(shape) == 3 and shape[-1] in (1, 3):
        return np.moveaxis(x, -1, 1)
    return None
