"""The ``digits`` source: scikit-learn's bundled 8x8 digits (1797 examples), split deterministically."""

from __future__ import annotations

import numpy as np

from dmflow.core.errors import DataError

DIGITS_SIZE = 1797
DIGITS_DEFAULT_TRAIN = 1000


def digits_arrays(num_train: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """(X_train [n, 8, 8], y_train, X_test, y_test, train_ids, test_ids): ``num_train`` examples drawn by ``seed``."""
    from sklearn.datasets import load_digits

    num_train = DIGITS_DEFAULT_TRAIN if num_train is None else num_train
    x, y = load_digits(return_X_y=True)
    if not 0 < num_train < len(x):
        raise DataError(f"dataset.num_train={num_train}: must be between 1 and {len(x) - 1} for digits")
    order = np.random.default_rng(np.random.SeedSequence((seed, 7))).permutation(len(x))
    train, test = np.sort(order[:num_train]), np.sort(order[num_train:])
    return x[train].reshape(-1, 8, 8), y[train], x[test].reshape(-1, 8, 8), y[test], train, test
