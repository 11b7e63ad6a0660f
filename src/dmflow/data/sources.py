"""Dataset sources: each yields training and test arrays, and the sizes a config implies.

The sources:

- ``digits``: scikit-learn's bundled 8x8 digits, split deterministically;
- ``npz``: a user file with X_train, y_train, X_test, y_test (any feature shape);
- ``cifar10``: torchvision's CIFAR-10 python-format folder (``data_batch_1..5``,
  ``test_batch``), read with an unpickler that only rebuilds numpy arrays;
- ``images``: a folder per class (ImageFolder style), with ``train/`` and
  ``test/`` inside or split deterministically;
- ``fashion-mnist``, ``mnist``, ``kmnist``: four IDX files (``dmflow.data.idx``).

``dmflow.data.prepare`` turns a source's arrays into the arrays of ``data.npz``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pickle
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmflow.core.errors import DataError, DataWarning
from dmflow.data.idx import IDX_DEFAULT_PATHS, IDX_NAMES, idx_source

NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")
DIGITS_SIZE = 1797
DIGITS_DEFAULT_TRAIN = 1000
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")
IMAGE_SOURCES = ("cifar10", "images", *IDX_NAMES)
"""Sources of uint8 pixels [N, C, H, W]: scaled to [0, 1] and standardised per channel."""


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


# --- digits and npz ---------------------------------------------------------------------------


def _digits(num_train: int | None, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    num_train = DIGITS_DEFAULT_TRAIN if num_train is None else num_train
    x, y = load_digits(return_X_y=True)
    if not 0 < num_train < len(x):
        raise DataError(f"dataset.num_train={num_train}: must be between 1 and {len(x) - 1} for digits")
    order = np.random.default_rng(np.random.SeedSequence((seed, 7))).permutation(len(x))
    train, test = np.sort(order[:num_train]), np.sort(order[num_train:])
    return x[train].reshape(-1, 8, 8), y[train], x[test].reshape(-1, 8, 8), y[test], train, test


def _npz(path: str) -> tuple[np.ndarray, ...]:
    check_npz(path)  # keys, shapes and dtypes from the headers: nothing is loaded before they pass
    with np.load(path, allow_pickle=False) as f:
        xtr, ytr, xte, yte = (f[k] for k in NPZ_KEYS)
    return xtr, ytr, xte, yte, np.arange(len(xtr)), np.arange(len(xte))


# --- CIFAR-10 (python format) -----------------------------------------------------------------


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


def _cifar10(path: str, download: bool) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = _cifar10_arrays(str(path), bool(download))
    return xtr, ytr, xte, yte, np.arange(len(xtr)), np.arange(len(xte))


# --- a folder per class -----------------------------------------------------------------------


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for each sub-folder of ``root``."""
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    files = {d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) for d in classes}
    empty = [name for name, paths in files.items() if not paths]
    if not files or empty:
        raise DataError(
            f"dataset.path={root}: need one sub-folder of images per class ({', '.join(IMAGE_SUFFIXES)});"
            f" {'no sub-folders' if not files else 'no images in ' + ', '.join(empty)}"
        )
    return files


def _read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 [3, H, W] (RGB), resized to ``size`` = (H, W) when given."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except OSError as exc:
        raise DataError(f"dataset.path: cannot read image {path} ({exc})") from None


def _stack_images(files: list[Path], size: tuple[int, int] | None) -> np.ndarray:
    images = [_read_image(p, size) for p in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = next(p for p, im in zip(files, images) if im.shape != images[0].shape)
        raise DataError(
            f"dataset.path: images differ in size ({files[0].name} is {images[0].shape[1:]}, {first.name} is not);"
            " set dataset.image_size: [H, W] to resize them"
        )
    return np.stack(images)


def _images(path: str, image_size: list[int] | None, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"dataset.path={root}: no such folder (need a folder per class, optionally inside train/ and test/)"
        )
    size = tuple(image_size) if image_size else None
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _class_files(root / "train"), _class_files(root / "test")
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise DataError(f"dataset.path={root}: test/ has classes {', '.join(unknown)} that train/ lacks")
        names = sorted(train)
        pairs = {"train": train, "test": test}
    else:
        files = _class_files(root)
        names = sorted(files)
        rng = np.random.default_rng(np.random.SeedSequence((seed, 13)))
        pairs = {"train": {}, "test": {}}
        for name in names:
            is_test = rng.random(len(files[name])) < test_fraction
            pairs["train"][name] = [p for p, t in zip(files[name], is_test) if not t]
            pairs["test"][name] = [p for p, t in zip(files[name], is_test) if t]
    out = []
    for part in ("train", "test"):
        paths = [p for name in names for p in pairs[part].get(name, [])]
        labels = np.array([names.index(name) for name in names for _ in pairs[part].get(name, [])], dtype=np.int64)
        if not paths:
            raise DataError(f"dataset.path={root}: no {part} images (raise or lower dataset.test_fraction)")
        out += [_stack_images(paths, size), labels]
    return out[0], out[1], out[2], out[3], np.arange(len(out[1])), np.arange(len(out[3]))


# --- the common path --------------------------------------------------------------------------


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
        return _digits(dataset.get("num_train"), seed)  # bundled: nothing to check
    if name == "npz":
        arrays = _npz(dataset["path"])
        check_arrays(arrays[:2], arrays[2:4], where=f"dataset.path={dataset['path']}")
        return arrays
    if name == "cifar10":
        xtr, ytr, xte, yte, itr, ite = _cifar10(_need_path(dataset), dataset.get("download", False))
    elif name == "images":
        xtr, ytr, xte, yte, itr, ite = _images(
            _need_path(dataset), dataset.get("image_size"), dataset.get("test_fraction", 0.2), seed
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


def _need_path(dataset: dict[str, Any]) -> str:
    if not dataset.get("path"):
        raise DataError(f"dataset.path is required when dataset.name={dataset['name']!r}")
    return dataset["path"]


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
        _need_path(dataset)
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
