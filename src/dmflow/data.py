"""Stage prepare_data: one ``data.npz`` holding the training set and the targets.

Two sources: ``digits`` (scikit-learn's bundled 8x8 digits, split deterministically)
and ``npz`` (a user file with X_train, y_train, X_test, y_test). Features are
standardised with training-set statistics when asked; the test examples become the
targets, optionally a deterministic sample of them, and their ids are recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dmflow.io import atomic_save_npz

DATASETS = ("digits", "npz")
NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")


class DataError(ValueError):
    """A dataset file or setting that cannot be used; the message is one line."""


def _check_labels(key: str, y: np.ndarray, path: Path) -> None:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"dataset.path={path}: {key} must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}"
        )
    if y.size and y.min() < 0:
        raise DataError(f"dataset.path={path}: {key} has negative labels; labels must be 0..C-1")


def check_npz(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Validate an npz dataset without loading pickles; returns the shape of each key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset.path={path}: no such file (need an .npz with keys {', '.join(NPZ_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"dataset.path={path}: missing key(s) {', '.join(missing)}; need {', '.join(NPZ_KEYS)}")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except (ValueError, OSError) as exc:
        raise DataError(f"dataset.path={path}: not a readable npz without pickles ({exc})") from None
    for part in ("train", "test"):
        x, y = arrays[f"X_{part}"], arrays[f"y_{part}"]
        _check_labels(f"y_{part}", y, path)
        if x.shape[0] != y.shape[0]:
            raise DataError(f"dataset.path={path}: X_{part} has {x.shape[0]} rows but y_{part} has {y.shape[0]}")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"dataset.path={path}: X_{part} must be real numbers, got dtype {x.dtype}")
    if arrays["X_train"].shape[1:] != arrays["X_test"].shape[1:]:
        raise DataError(f"dataset.path={path}: X_train and X_test feature shapes differ")
    return {k: v.shape for k, v in arrays.items()}


def _digits(num_train: int, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    if not 0 < num_train < len(x):
        raise DataError(f"dataset.num_train={num_train}: must be between 1 and {len(x) - 1} for digits")
    order = np.random.default_rng(np.random.SeedSequence((seed, 7))).permutation(len(x))
    train, test = np.sort(order[:num_train]), np.sort(order[num_train:])
    return x[train].reshape(-1, 8, 8), y[train], x[test].reshape(-1, 8, 8), y[test], train, test


def _npz(path: str) -> tuple[np.ndarray, ...]:
    check_npz(path)
    with np.load(path, allow_pickle=False) as f:
        xtr, ytr, xte, yte = (f[k] for k in NPZ_KEYS)
    return xtr, ytr, xte, yte, np.arange(len(xtr)), np.arange(len(xte))


def load_source(dataset: dict[str, Any], seed: int) -> tuple[np.ndarray, ...]:
    """(X_train, y_train, X_test, y_test, train_ids, test_ids) from the configured source."""
    if dataset["name"] == "digits":
        return _digits(int(dataset["num_train"]), seed)
    if dataset["name"] == "npz":
        return _npz(dataset["path"])
    raise DataError(f"dataset.name={dataset['name']!r} is not one of {DATASETS}")


def choose_targets(num_test: int, num_targets: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the test examples used as targets (all, or a deterministic sample)."""
    if num_targets is None or num_targets >= num_test:
        return np.arange(num_test)
    rng = np.random.default_rng(np.random.SeedSequence((seed, 11)))
    return np.sort(rng.choice(num_test, size=num_targets, replace=False))


def num_targets(dataset: dict[str, Any]) -> int:
    """How many targets the dataset config yields, without preparing the data."""
    if dataset["name"] == "digits":
        total = 1797 - int(dataset["num_train"])
    else:
        total = check_npz(dataset["path"])["X_test"][0]
    cap = dataset.get("num_targets")
    return total if cap is None else min(total, int(cap))


def prepare_data(dataset: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The arrays of ``data.npz``: float32 features, int64 labels, ids, class count."""
    xtr, ytr, xte, yte, train_ids, test_ids = load_source(dataset, seed)
    targets = choose_targets(len(xte), dataset.get("num_targets"), seed)
    xtr, xte = xtr.astype(np.float32), xte[targets].astype(np.float32)
    if dataset.get("standardize", True):
        mean, std = xtr.mean(axis=0), xtr.std(axis=0)
        std[std == 0] = 1.0
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
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


def write_data(out: Path, dataset: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Prepare the data and write ``data.npz`` atomically."""
    arrays = prepare_data(dataset, seed)
    atomic_save_npz(Path(out), arrays)
    return arrays
