"""The ``npz`` source: a user's file with X_train, y_train, X_test, y_test (any feature shape)."""

from __future__ import annotations

import numpy as np

from dmflow.data.checks import NPZ_KEYS, check_npz


def npz_arrays(path: str) -> tuple[np.ndarray, ...]:
    """(X_train, y_train, X_test, y_test, train_ids, test_ids) of the file, once its headers pass ``check_npz``."""
    check_npz(path)  # keys, shapes and dtypes from the headers: nothing is loaded before they pass
    with np.load(path, allow_pickle=False) as f:
        xtr, ytr, xte, yte = (f[k] for k in NPZ_KEYS)
    return xtr, ytr, xte, yte, np.arange(len(xtr)), np.arange(len(xte))
