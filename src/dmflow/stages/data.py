"""Rules of ``rules/data.smk``: ``prepare_data`` writes ``data.npz``; and the CLI helper
``synthetic-cifar10``, which writes a dataset folder in CIFAR-10's python format."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dmflow.core.io import atomic_save_npz
from dmflow.data.cifar10 import synthetic_images
from dmflow.data.prepare import prepare_data as prepare_arrays

log = logging.getLogger(__name__)


def prepare_data(dataset: dict[str, Any], seed: int, out: Path) -> dict[str, np.ndarray]:
    """Prepare the arrays of the config's ``dataset`` section and write ``data.npz`` atomically."""
    arrays = prepare_arrays(dataset, seed)
    atomic_save_npz(Path(out), arrays)
    log.info("wrote %s: %d training examples, %d targets", out, len(arrays["y_train"]), len(arrays["y_target"]))
    return arrays


def write_cifar10_folder(
    folder: str | Path,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    batches: int = 5,
) -> Path:
    """Write uint8 images [N, 3, 32, 32] in CIFAR-10's python format (``data_batch_1..batches``, ``test_batch``).

    For converting other data to the format, and for tests and demos that need a folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(y_train)), batches)
    files = [(f"data_batch_{i + 1}", x_train[idx], y_train[idx]) for i, idx in enumerate(parts)]
    for name, x, y in [*files, ("test_batch", x_test, y_test)]:
        batch = {
            "batch_label": name,
            "labels": [int(v) for v in y],
            "data": np.ascontiguousarray(x, dtype=np.uint8).reshape(len(y), -1),
            "filenames": [f"{name}_{i}.png" for i in range(len(y))],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    labels = [f"class_{c}" for c in range(int(max(y_train.max(), y_test.max())) + 1)]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": labels, "num_cases_per_batch": len(parts[0]), "num_vis": 3072}, fh, protocol=2)
    return folder


def synthetic_cifar10(out: Path, *, train: int, test: int, classes: int, seed: int) -> Path:
    """A synthetic stand-in for CIFAR-10 (``dmflow.data.cifar10.synthetic_images``) in its python format."""
    x, y = synthetic_images(train + test, classes, seed)
    folder = write_cifar10_folder(out, x_train=x[:train], y_train=y[:train], x_test=x[train:], y_test=y[train:])
    log.info("wrote a synthetic CIFAR-10-format folder %s: %d training and %d test images", folder, train, test)
    return folder
