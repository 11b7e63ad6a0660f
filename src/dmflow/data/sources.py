"""Dataset sources: each yields training and test arrays (``load_source``).

The sources, one module each:

- ``digits``: scikit-learn's bundled 8x8 digits, split deterministically (``dmflow.data.digits``);
- ``npz``: a user file with X_train, y_train, X_test, y_test (any feature shape; ``dmflow.data.npz``);
- ``cifar10``: torchvision's CIFAR-10 python-format folder (``dmflow.data.cifar10``);
- ``images``: a folder per class (ImageFolder style; ``dmflow.data.folders``);
- ``fashion-mnist``, ``mnist``, ``kmnist``: four IDX files (``dmflow.data.idx``).

Their checks are ``dmflow.data.checks``; the sizes a config implies, ``dmflow.data.sizing``;
``dmflow.data.prepare`` turns a source's arrays into the arrays of ``data.npz``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dmflow.core.errors import DataError
from dmflow.core.schema import defaults
from dmflow.data.checks import check_arrays
from dmflow.data.cifar10 import cifar10_arrays
from dmflow.data.digits import digits_arrays
from dmflow.data.folders import folder_arrays
from dmflow.data.idx import IDX_DEFAULT_PATHS, IDX_NAMES, idx_source
from dmflow.data.npz import npz_arrays

_DATASET = defaults("dataset")
IMAGE_SOURCES = ("cifar10", "images", *IDX_NAMES)
"""Sources of uint8 pixels [N, C, H, W]: scaled to [0, 1] and standardised per channel."""


def _select_classes(x: np.ndarray, y: np.ndarray, ids: np.ndarray, classes: list[int] | None) -> tuple[np.ndarray, ...]:
    """Keep only ``classes`` (relabelled 0..len-1 in the given order)."""
    if not classes:
        return x, y, ids
    missing = [c for c in classes if c not in set(np.unique(y).tolist())]
    if missing:
        raise DataError(
            f"dataset.classes={classes}: class(es) {missing} have no examples; labels present: {sorted(set(y.tolist()))}"
        )
    keep = np.isin(y, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    return x[keep], np.array([relabel[int(c)] for c in y[keep]], dtype=np.int64), ids[keep]


def _subsample(n: int, size: int | None, seed: int, key: int) -> np.ndarray:
    """Sorted indices of a deterministic sample of ``size`` of ``n`` (all when size is None)."""
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence((seed, key)))
    return np.sort(rng.choice(n, size=size, replace=False))


def load_source(dataset: dict[str, Any], seed: int) -> tuple[np.ndarray, ...]:
    """(X_train, y_train, X_test, y_test, train_ids, test_ids) from the configured source.

    For the image sources, ``dataset.classes`` keeps a class subset and
    ``dataset.num_train`` a deterministic sample of the training set.
    """
    name = dataset["name"]
    if name == "digits":
        return digits_arrays(dataset.get("num_train"), seed)  # bundled: nothing to check
    if name == "npz":
        arrays = npz_arrays(dataset["path"])
        check_arrays(arrays[:2], arrays[2:4], where=f"dataset.path={dataset['path']}")
        return arrays
    if name == "cifar10":
        xtr, ytr, xte, yte, itr, ite = cifar10_arrays(need_path(dataset), dataset.get("download", _DATASET["download"]))
    elif name == "images":
        xtr, ytr, xte, yte, itr, ite = folder_arrays(
            need_path(dataset),
            dataset.get("image_size"),
            test_fraction=dataset.get("test_fraction", _DATASET["test_fraction"]),
            seed=seed,
        )
    elif name in IDX_NAMES:
        if dataset.get("download"):
            raise DataError(f"dataset.download=true: {name} is never downloaded; set dataset.path to its IDX files")
        xtr, ytr, xte, yte, itr, ite = idx_source(name, dataset.get("path"))
    else:  # the schema allows no other name
        raise DataError(f"dataset.name={name!r} has no loader")
    classes = dataset.get("classes")
    xtr, ytr, itr = _select_classes(xtr, ytr, itr, classes)
    xte, yte, ite = _select_classes(xte, yte, ite, classes)
    keep = _subsample(len(ytr), dataset.get("num_train"), seed, 17)
    where = f"dataset.path={dataset.get('path') or IDX_DEFAULT_PATHS.get(name)}"
    check_arrays((xtr[keep], ytr[keep]), (xte, yte), where=where)
    return xtr[keep], ytr[keep], xte, yte, itr[keep], ite


def need_path(dataset: dict[str, Any]) -> str:
    """``dataset.path``, which the sources but digits need; DataError (one line) without it."""
    if not dataset.get("path"):
        raise DataError(f"dataset.path is required when dataset.name={dataset['name']!r}")
    return dataset["path"]
