"""IDX datasets: Fashion-MNIST, MNIST and KMNIST, read from their four IDX files.

The four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or
plain) are looked for in ``dataset.path``, in ``dataset.path/<Name>/raw`` (torchvision's
layout: ``FashionMNIST``, ``MNIST``, ``KMNIST``) and in ``dataset.path/raw``. Fashion-MNIST
defaults to Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).
Nothing is ever downloaded.

An IDX file is a 4-byte magic number (two zero bytes, the element type, the number of
dimensions), one big-endian uint32 per dimension, and the elements. Images must be
``idx3`` unsigned bytes ``[N, H, W]`` (one H x W in both parts), labels ``idx1``
unsigned bytes ``[N]`` in ``0..9``; every other file is refused with one line naming it
and what is wrong, before anything is allocated from the header's claims. Read with
``gzip`` and ``np.frombuffer``.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from dmflow.core.errors import DataError

IDX_NAMES = ("fashion-mnist", "mnist", "kmnist")
IDX_DEFAULT_PATHS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
"""Where a name's files are when ``dataset.path`` is null (Debian's package); the others need a path."""
TORCHVISION_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}
IDX_CLASSES = {"fashion-mnist": 10, "mnist": 10, "kmnist": 10}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08
IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
READ_CHUNK = 1 << 24
MAX_DEFLATE_RATIO = 1032
"""Deflate expands at most about 1032:1, which bounds what a gzip file of a given size can hold."""


def _files_in(folder: Path) -> dict[str, Path | None]:
    """Each IDX file's path in ``folder`` (plain preferred to ``.gz``), or None where neither exists."""
    found: dict[str, Path | None] = {}
    for key, stem in IDX_FILES.items():
        plain, packed = folder / stem, folder / f"{stem}.gz"
        found[key] = plain if plain.is_file() else packed if packed.is_file() else None
    return found


def idx_files(name: str, path: str | Path | None) -> dict[str, Path]:
    """The four IDX files of dataset ``name`` under ``path``.

    Parameters
    ----------
    name : str
        One of ``IDX_NAMES``.
    path : str, Path or None
        ``dataset.path``: the folder of the four files, torchvision's root (its
        ``<Name>/raw`` holds them) or that ``raw`` folder's parent; None takes
        ``IDX_DEFAULT_PATHS[name]``.

    Returns
    -------
    dict of str to Path
        ``train_images``, ``train_labels``, ``test_images``, ``test_labels``: each file,
        plain where both it and its ``.gz`` exist.

    Raises
    ------
    DataError
        One line: no path for a name without a default, or the folders looked in and
        the files missing.
    """
    stems = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    if path is None and name not in IDX_DEFAULT_PATHS:
        raise DataError(
            f"dataset.path is required when dataset.name={name!r}: the folder of {stems}, or torchvision's "
            f"{TORCHVISION_FOLDERS[name]}/raw (dmflow never downloads)"
        )
    root = Path(path if path is not None else IDX_DEFAULT_PATHS[name])
    candidates = [root, root / TORCHVISION_FOLDERS[name] / "raw", root / "raw"]
    for folder in candidates:
        found = _files_in(folder)
        if all(found.values()):
            return {key: p for key, p in found.items() if p is not None}
        if any(found.values()):
            missing = ", ".join(f"{IDX_FILES[key]}[.gz]" for key, p in found.items() if p is None)
            raise DataError(f"dataset.path={root}: {folder} lacks {missing}; an IDX dataset needs all of {stems}")
    hint = " (Debian: apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
    raise DataError(
        f"dataset.path={root}: no {name} IDX files ({stems}) here, in {TORCHVISION_FOLDERS[name]}/raw/ or in raw/"
        f"{hint}; dmflow never downloads them"
    )


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_up_to(fh, size: int) -> bytes:
    """Up to ``size`` bytes, in chunks: memory follows what the file holds, not what its header claims."""
    chunks, got = [], 0
    while got < size:
        chunk = fh.read(min(READ_CHUNK, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _check_magic(path: Path, head: bytes, ndim: int) -> None:
    what = "images [N, H, W]" if ndim == 3 else "labels [N]"
    expected = f"00 00 08 {ndim:02x}"
    if len(head) < 4:
        raise DataError(
            f"dataset.path: {path} is truncated: {len(head)} byte(s), not even the 4-byte IDX magic ({expected})"
        )
    if head[:2] == b"\x1f\x8b":
        raise DataError(f"dataset.path: {path} is gzip-compressed but not named .gz; rename it {path.name}.gz")
    if head[:2] != b"\x00\x00" or head[2] not in IDX_TYPES:
        raise DataError(
            f"dataset.path: {path} is not an IDX file: its magic number is {head.hex(' ')}; "
            f"IDX {what} start with {expected}"
        )
    if head[2] != IDX_UBYTE:
        raise DataError(
            f"dataset.path: {path} holds IDX {IDX_TYPES[head[2]]} values (type 0x{head[2]:02x}); "
            f"dmflow reads {what} as unsigned bytes (magic {expected}) only"
        )
    if head[3] != ndim:
        raise DataError(
            f"dataset.path: {path} has {head[3]} dimension(s) (magic {head.hex(' ')}); IDX {what} have {ndim} "
            f"(magic {expected})"
        )


def read_idx(path: str | Path, *, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file of unsigned bytes with ``ndim`` dimensions, gzipped or plain.

    The header's shape is checked against the file's size before anything is read into
    memory (exactly for a plain file, against deflate's largest ratio for a gzip), and a
    file holding fewer or more bytes than the shape, or a gzip stream that is cut short or
    fails its CRC, is refused.

    Parameters
    ----------
    path : str or Path
        The file; read through ``gzip`` when its name ends in ``.gz``.
    ndim : int
        The dimensions it must have: 3 for images ``[N, H, W]``, 1 for labels ``[N]``.

    Returns
    -------
    np.ndarray
        uint8, the header's shape (read-only: a view of the bytes read).

    Raises
    ------
    DataError
        One line naming the file, what is wrong, and what an IDX file of ``ndim``
        unsigned-byte dimensions looks like.
    """
    path = Path(path)
    packed = path.suffix == ".gz"
    header = 4 + 4 * ndim
    try:
        size = path.stat().st_size
        with _open(path) as fh:
            _check_magic(path, fh.read(4), ndim)
            dims_bytes = fh.read(4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise DataError(f"dataset.path: {path} is truncated inside its header ({header} bytes for {ndim} dims)")
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            claimed = math.prod(dims)
            if not packed and claimed != size - header:
                cut = "truncated" if claimed > size - header else "followed by extra bytes"
                raise DataError(
                    f"dataset.path: {path} holds {size - header} data bytes but its header claims shape "
                    f"{list(dims)} ({claimed} bytes): {cut}"
                )
            if packed and claimed > size * MAX_DEFLATE_RATIO:
                raise DataError(
                    f"dataset.path: {path} claims shape {list(dims)} ({claimed} bytes), more than a gzip file "
                    f"of {size} bytes can hold"
                )
            data = _read_up_to(fh, claimed)
            if len(data) < claimed:
                raise DataError(
                    f"dataset.path: {path} is truncated: {len(data)} of the {claimed} data bytes its header "
                    f"claims (shape {list(dims)})"
                )
            if fh.read(1):  # also reads a gzip's trailer, checking its CRC and length
                raise DataError(
                    f"dataset.path: {path} holds more data than its header's shape {list(dims)} "
                    f"({claimed} bytes); an IDX file ends with its data"
                )
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"dataset.path: {path} is not a complete gzip file ({type(exc).__name__}: {exc}); "
            "re-fetch it, or unpack it and drop the .gz"
        ) from None
    except OSError as exc:
        raise DataError(f"dataset.path: cannot read {path} ({type(exc).__name__}: {exc})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _labels(path: Path, count: int, images: Path, num_classes: int) -> np.ndarray:
    labels = read_idx(path, ndim=1)
    if len(labels) != count:
        raise DataError(
            f"dataset.path: {path} holds {len(labels)} labels but {images} holds {count} images; the counts must match"
        )
    if labels.size and int(labels.max()) >= num_classes:
        first = int(np.flatnonzero(labels >= num_classes)[0])
        raise DataError(
            f"dataset.path: {path} has label {int(labels[first])} (first at index {first}); "
            f"labels must be 0..{num_classes - 1}"
        )
    return labels.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _idx_arrays(name: str, path: str | None) -> tuple[np.ndarray, ...]:
    files = idx_files(name, path)
    parts = []
    for part in ("train", "test"):
        images = read_idx(files[f"{part}_images"], ndim=3)
        if 0 in images.shape:
            raise DataError(
                f"dataset.path: {files[f'{part}_images']} has shape {list(images.shape)}; "
                "IDX images need at least one image of at least 1x1 pixels"
            )
        labels = _labels(files[f"{part}_labels"], len(images), files[f"{part}_images"], IDX_CLASSES[name])
        parts.append((images, labels))
    (xtr, ytr), (xte, yte) = parts
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"dataset.path: {files['test_images']} holds {xte.shape[1]}x{xte.shape[2]} images but "
            f"{files['train_images']} {xtr.shape[1]}x{xtr.shape[2]}; both parts must have one H x W"
        )
    return xtr[:, None], ytr, xte[:, None], yte


def idx_source(name: str, path: str | None) -> tuple[np.ndarray, ...]:
    """An IDX dataset's arrays, as every source yields them, with the original indices as ids.

    Read once per process and folder (the config check and ``prepare_data`` share it).

    Parameters
    ----------
    name : str
        One of ``IDX_NAMES``.
    path : str or None
        ``dataset.path`` (see ``idx_files``); None takes the name's default.

    Returns
    -------
    tuple of np.ndarray
        ``X_train`` uint8 ``[N, 1, H, W]``, ``y_train`` int64 ``[N]``, ``X_test`` uint8
        ``[M, 1, H, W]``, ``y_test`` int64 ``[M]``, ``train_ids`` int64 ``[N]`` (``0..N-1``),
        ``test_ids`` int64 ``[M]`` (``0..M-1``).

    Raises
    ------
    DataError
        One line naming the file and what is wrong with it.
    """
    xtr, ytr, xte, yte = _idx_arrays(name, None if path is None else str(path))
    return xtr, ytr, xte, yte, np.arange(len(xtr)), np.arange(len(xte))
