"""The ``cifar10`` source: torchvision's CIFAR-10 python-format folder (``data_batch_1..5``, ``test_batch``),
read with an unpickler that only rebuilds numpy arrays; and a synthetic stand-in in its shapes."""

from __future__ import annotations

import functools
import hashlib
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from dmflow.core.errors import DataError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings and numpy arrays; refuses every other global.

    CIFAR-10's python batches are pickles. A plain ``pickle.load`` would run any
    callable a tampered file names; this unpickler only lets numpy's array
    reconstruction through, so a foreign file fails with an error instead.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays, lists and strings")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one python-format batch file."""
    try:
        with open(path, "rb") as fh:
            batch = _ArrayOnlyUnpickler(fh, encoding="latin1").load()
    except DataError as exc:
        raise DataError(f"dataset.path: {path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"dataset.path: {path} is not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"dataset.path: {path} is not a CIFAR-10 python batch (no dict inside)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or not ("labels" in batch or "fine_labels" in batch):
        raise DataError(f"dataset.path: {path} lacks 'data' or 'labels'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"dataset.path: {path}: data must be [N, 3072] uint8 with N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels


SYNTHETIC_CIFAR10 = {"train": 5000, "test": 1000, "classes": 10}
"""The sizes of ``dmflow synthetic-cifar10``'s folder unless given: CIFAR-10's classes, a tenth of its images."""


def synthetic_images(
    num: int, num_classes: int, seed: int, *, size: int = 32, noise: float = 90.0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [num, 3, size, size] and labels: one smooth random template per class plus noise.

    A stand-in for CIFAR-10 where no copy exists (demos, tests): learnable, not trivial.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(100, 155, (num_classes, 3, 4, 4))
    templates = coarse.repeat(size // 4, axis=2).repeat(size // 4, axis=3)
    labels = rng.integers(0, num_classes, num)
    images = templates[labels] + rng.normal(0, noise, (num, 3, size, size))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def cifar10_folder(path: str | Path, download: bool = False) -> Path:
    """The folder holding ``data_batch_1..5`` and ``test_batch`` (``path`` or ``path/cifar-10-batches-py``)."""
    path = Path(path)
    for candidate in (path, path / CIFAR10_FOLDER):
        if (candidate / "test_batch").is_file() and (candidate / "data_batch_1").is_file():
            return candidate
    if download:
        return download_cifar10(path)
    raise DataError(
        f"dataset.path={path}: no CIFAR-10 python batches (data_batch_1..5, test_batch) here or in {CIFAR10_FOLDER}/;"
        " download cifar-10-python.tar.gz and unpack it, or set dataset.download: true where a network exists"
    )


def download_cifar10(path: Path) -> Path:
    """Fetch the official archive into ``path``, check its MD5 and unpack it."""
    import urllib.request

    path.mkdir(parents=True, exist_ok=True)
    archive = path / "cifar-10-python.tar.gz"
    urllib.request.urlretrieve(CIFAR10_URL, archive)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    if digest != CIFAR10_MD5:
        raise DataError(f"dataset.download: {archive} has MD5 {digest}, expected {CIFAR10_MD5}")
    with tarfile.open(archive) as tar:
        tar.extractall(path, filter="data")
    return path / CIFAR10_FOLDER


@functools.lru_cache(maxsize=4)
def _cifar10_arrays(path: str, download: bool) -> tuple[np.ndarray, ...]:
    folder = cifar10_folder(path, download)
    train_files = sorted(folder.glob("data_batch_*"), key=lambda p: p.name)
    parts = [read_cifar_batch(p) for p in train_files]
    xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xte, yte = read_cifar_batch(folder / "test_batch")
    return xtr, ytr, xte, yte


def cifar10_arrays(path: str, download: bool) -> tuple[np.ndarray, ...]:
    """(X_train uint8 [N, 3, 32, 32], y_train, X_test, y_test, train_ids, test_ids) of the python-format folder."""
    xtr, ytr, xte, yte = _cifar10_arrays(str(path), bool(download))
    return xtr, ytr, xte, yte, np.arange(len(xtr)), np.arange(len(xte))
