"""Checks of a dataset before any job: an ``.npz`` file's keys, shapes and dtypes from its headers
(nothing loaded), and the arrays any source yields (finite features, labels 0..C-1, two classes)."""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmflow.core.errors import DataError, DataWarning

NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")
"""The arrays of a user's ``.npz`` dataset."""


@dataclass(frozen=True)
class ArrayHeader:
    """What an .npy header inside an npz says of its array."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _what_it_is(path: Path) -> str:
    """A file that is not a zip archive, named by its first bytes."""
    head = path.read_bytes()[:8] if path.stat().st_size else b""
    if not head:
        return "is empty"
    if head.startswith(b"\x93NUMPY"):
        return "is a single .npy array, not an .npz archive of X_train, y_train, X_test, y_test (np.savez writes one)"
    if head[:1] == b"\x80":
        return "is a Python pickle, not an .npz archive (dmflow never unpickles a dataset file)"
    return f"is not an .npz (zip) archive (it starts with {head!r})"


def npz_headers(path: str | Path) -> dict[str, ArrayHeader]:
    """Shape and dtype of ``X_train, y_train, X_test, y_test`` from their .npy headers, loading no array.

    Each header's claim (shape x itemsize) must match the bytes the archive holds for the
    array, so a header that lies about its size is refused before anything is allocated.

    Raises
    ------
    DataError
        One line naming ``dataset.path`` and what is wrong with the file.
    """
    path = Path(path)
    where = f"dataset.path={path}"
    if not path.is_file():
        raise DataError(f"{where}: no such file (need an .npz with keys {', '.join(NPZ_KEYS)})")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{where}: {_what_it_is(path)}")
    headers = {}
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            missing = [k for k in NPZ_KEYS if f"{k}.npy" not in names]
            if missing:
                raise DataError(f"{where}: missing key(s) {', '.join(missing)}; need {', '.join(NPZ_KEYS)}")
            for key in NPZ_KEYS:
                info = zf.getinfo(f"{key}.npy")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(fh)
                    header_bytes = fh.tell()
                if dtype.hasobject:
                    raise DataError(f"{where}: {key} holds pickled (object) data; dmflow reads numbers only")
                claimed = math.prod(shape) * dtype.itemsize
                if claimed != info.file_size - header_bytes:
                    raise DataError(
                        f"{where}: the header of {key} claims shape {list(shape)} ({claimed} bytes) "
                        f"but the archive holds {info.file_size - header_bytes} bytes for it"
                    )
                headers[key] = ArrayHeader(tuple(shape), dtype)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where}: not a readable npz ({type(exc).__name__}: {exc})") from None
    return headers


def check_npz(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Check an npz dataset's keys, shapes and dtypes from its headers; returns the shape of each key."""
    headers = npz_headers(path)
    where = f"dataset.path={path}"
    for part in ("train", "test"):
        x, y = headers[f"X_{part}"], headers[f"y_{part}"]
        if len(y.shape) != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{part} must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}")
        if len(x.shape) < 2:
            raise DataError(f"{where}: X_{part} must be [examples, features...], got shape {list(x.shape)}")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"{where}: X_{part} must be real numbers, got dtype {x.dtype}")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{where}: X_{part} has {x.shape[0]} rows but y_{part} has {y.shape[0]}")
    if headers["X_train"].shape[1:] != headers["X_test"].shape[1:]:
        raise DataError(
            f"{where}: X_train and X_test feature shapes differ "
            f"({list(headers['X_train'].shape[1:])} vs {list(headers['X_test'].shape[1:])})"
        )
    return {k: h.shape for k, h in headers.items()}


def check_arrays(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *, where: str) -> None:
    """Refuse data no model can learn from, before any job; warn about targets of unseen classes.

    Features must be finite and within float32's range (they are trained in float32),
    with at least one feature; there must be two training examples, one test example and
    two training classes; labels must be 0..C-1 with C no larger than the number of
    distinct labels present (a stray label of 10^9 would otherwise ask for 10^9 logits).

    Parameters
    ----------
    train, test : (X [N, ...], y int [N])
        The features and labels of each part, as a source yields them.
    where : str
        The config key the data came from, starting every message.

    Raises
    ------
    DataError
        One line starting with ``where`` and naming the problem.
    """
    (x_train, y_train), (x_test, y_test) = train, test
    if math.prod(x_train.shape[1:]) == 0:
        raise DataError(f"{where}: the examples have no features (shape {list(x_train.shape[1:])})")
    if len(y_train) < 2 or len(y_test) < 1:
        raise DataError(f"{where}: need at least 2 training and 1 test example, got {len(y_train)} and {len(y_test)}")
    big = float(np.finfo(np.float32).max)
    for key, x in (("X_train", x_train), ("X_test", x_test)):
        if np.issubdtype(x.dtype, np.floating):
            bad = ~np.isfinite(x) | (np.abs(x) > big)
            if bad.any():
                row = int(np.flatnonzero(bad.reshape(len(x), -1).any(1))[0])
                raise DataError(
                    f"{where}: {key} has {int(bad.sum())} value(s) that are NaN, infinite or beyond "
                    f"float32's range (first in row {row}); features must be finite"
                )
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if np.issubdtype(y.dtype, np.unsignedinteger) and y.size and y.max() > np.iinfo(np.int64).max:
            raise DataError(
                f"{where}: {key} has labels above 2^63 - 1 (the largest is {y.max()}); labels must be 0..C-1"
            )
        if y.size and y.min() < 0:
            raise DataError(f"{where}: {key} has negative labels; labels must be 0..C-1")
    present = np.union1d(np.unique(y_train), np.unique(y_test))
    if int(present.max()) + 1 > len(present):
        raise DataError(
            f"{where}: labels must be 0..C-1: {len(present)} distinct labels are present, the largest "
            f"is {int(present.max())}; relabel them 0..{len(present) - 1}"
        )
    trained = np.unique(y_train)
    if len(trained) < 2:
        raise DataError(f"{where}: the training set has a single class ({int(trained[0])}); need at least two")
    unseen = np.setdiff1d(np.unique(y_test), trained)
    if len(unseen):
        count = int(np.isin(y_test, unseen).sum())
        warnings.warn(
            f"{where}: {count} test example(s) have label(s) {unseen.tolist()} that no training example "
            "has; no model can predict them, and their margins only say how wrong",
            DataWarning,
            stacklevel=2,
        )
