"""The sizes a dataset config implies (n, T, feature shape, classes), known before ``prepare_data`` runs:
the config check and the rules read them at parse time."""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from typing import Any

from dmflow.core.errors import DataError, DataWarning
from dmflow.data.digits import DIGITS_DEFAULT_TRAIN, DIGITS_SIZE
from dmflow.data.sources import load_source, need_path


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset config yields, known before ``prepare_data`` runs."""

    num_train: int
    num_targets: int
    feature_shape: tuple[int, ...]
    num_classes: int
    warnings: tuple[str, ...]


@functools.lru_cache(maxsize=8)
def _info(dataset_json: str, seed: int) -> DatasetInfo:
    dataset = json.loads(dataset_json)
    cap = dataset.get("num_targets")
    if dataset["name"] == "digits":  # bundled and known: no need to load it
        n = dataset.get("num_train") or DIGITS_DEFAULT_TRAIN
        if not 0 < n < DIGITS_SIZE:
            raise DataError(f"dataset.num_train={n} must be below {DIGITS_SIZE} (digits has {DIGITS_SIZE} examples)")
        total = DIGITS_SIZE - n
        return DatasetInfo(n, total if cap is None else min(total, int(cap)), (8, 8), 10, ())
    if dataset["name"] == "npz":
        need_path(dataset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        xtr, ytr, xte, yte, _, _ = load_source(dataset, seed)
    notes = tuple(str(w.message) for w in caught if issubclass(w.category, DataWarning))
    total = len(yte)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    return DatasetInfo(
        len(ytr), total if cap is None else min(total, int(cap)), tuple(xtr.shape[1:]), num_classes, notes
    )


def dataset_info(dataset: dict[str, Any], seed: int = 0) -> DatasetInfo:
    """Sizes, feature shape, class count and warnings of a dataset config, with every check of its data.

    Loads the data (but bundled digits) once per process and config: the config check
    refuses bad data before any job.
    """
    return _info(json.dumps(dataset, sort_keys=True), int(seed))


def dataset_sizes(dataset: dict[str, Any], seed: int = 0) -> tuple[int, int]:
    """(training examples n, targets T) that the dataset config yields, before prepare_data runs."""
    info = dataset_info(dataset, seed)
    return info.num_train, info.num_targets
