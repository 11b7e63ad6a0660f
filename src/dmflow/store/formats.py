"""Every on-disk format of dmflow's numbers, declared once, and their light readers (numpy only, no torch).

Each format is a tuple of ``ArraySpec`` (name, dtype, axes, meaning) and a version that a change of the
format bumps; a reader refuses a file of another version in one line (``StoreError``) that says what
rebuilds it. The stages write these files (with ``dmflow.core.io``'s atomic writers) and read them
back through the readers here, never through another stage.

Axes: m models (rows), n training examples, ``n/8`` the bytes of a bit-packed row, R replicates,
T targets (of the store, or of one fit block), L lambdas of the path; ``()`` is a scalar.

- chunk ``train/{alpha}/{split}/{chunk}.npz``: ``CHUNK_ARRAYS`` (m = the chunk size; no version: its bytes
  depend on the config alone); its masks are the masks file ``masks/{alpha}/{split}/{chunk}.npy``, bool [m, n];
  ``open_chunk``.
- store ``store/{alpha}/{split}/``: one ``{name}.npy`` per ``STORE_ARRAYS`` and ``manifest.json``
  (``STORE_FORMAT``; shapes, dtypes and sha256 of the arrays, the chunks, the diverged count); ``open_store``.
- moments ``moments/{alpha}/``: one ``{name}_{part}.npy`` per ``MOMENT_ARRAYS`` and part of
  ``MOMENT_PARTS`` and ``manifest.json`` (``MOMENTS_FORMAT``; the store manifest's sha256, the
  validation split, counts, the largest and smallest non-null eigenvalues, the kernels, each array's
  sha256); ``open_moments``.
- fit block ``fit/{alpha}/block{b}.npz``: ``FIT_BLOCK_ARRAYS`` (T = the block's targets), ``format``
  = ``FIT_BLOCK_FORMAT``; ``open_fit_block``.
- datamodels ``datamodels/{alpha}.npz``: ``DATAMODELS_ARRAYS``, ``format`` = ``DATAMODELS_FORMAT``;
  ``open_datamodels``.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmflow.core.codes import DATAMODEL_FLAGS, MODEL_STATUS, STATUS_OK, describe
from dmflow.core.errors import StoreError
from dmflow.core.io import load_json, load_npz, sha256_file, sha256_files
from dmflow.core.layout import Layout
from dmflow.store.masks import PackedMasks


@dataclass(frozen=True)
class ArraySpec:
    """One array of a format: its name (the ``.npy`` file's stem or the ``.npz`` key), dtype, axes and meaning."""

    name: str
    dtype: np.dtype
    axes: tuple[str, ...]
    meaning: str

    def shape(
        self, *, m: int = 0, n: int = 0, replicates: int = 0, targets: int = 0, lambdas: int = 0
    ) -> tuple[int, ...]:
        """The shape for these sizes (m models, n training examples, R replicates, T targets, L lambdas)."""
        sizes = {"m": m, "n": n, "n/8": -(-n // 8), "R": replicates, "T": targets, "L": lambdas}
        return tuple(sizes[a] for a in self.axes)


def _spec(name: str, dtype: type, axes: tuple[str, ...], meaning: str) -> ArraySpec:
    return ArraySpec(name, np.dtype(dtype), axes, meaning)


# --- the store (and the trained chunk) ---------------------------------------------------------------

STORE_FORMAT = 2
"""2: the manifest carries its own checksum (``dmflow.core.io.SEAL``)."""
STORE_ARRAYS = (
    _spec("masks", np.uint8, ("m", "n/8"), "training subset of each model row, one bit per example"),
    _spec("margins", np.float32, ("m", "R", "T"), "margin of each replicate on each target"),
    _spec("status", np.uint8, ("m", "R"), describe(MODEL_STATUS)),
    _spec("seeds", np.int64, ("m", "R"), "each model's seed"),
    _spec("acc_target", np.float32, ("m", "R"), "accuracy on the targets"),
    _spec("acc_subset", np.float32, ("m", "R"), "accuracy on the model's own subset"),
)
STORE_NAMES = tuple(spec.name for spec in STORE_ARRAYS)
CHUNK_ARRAYS = tuple(spec for spec in STORE_ARRAYS if spec.name != "masks")
"""The arrays of a trained chunk file (its masks are the chunk's masks file, bool [m, n])."""
STORE_REBUILD = "remove it and rerun the workflow (collect rebuilds it from the chunks)"

# --- the moments ---------------------------------------------------------------------------------------

MOMENTS_FORMAT = 3
"""2: the manifest carries its own checksum; 3: it always holds ``bottom_eigenvalue``."""
MOMENT_PARTS = ("fit", "val")
"""The row sets of the moments: the fit rows and the validation rows of the fit store."""
MOMENT_ARRAYS = (
    _spec("gram", np.float32, ("n", "n"), "centred Gram sums Xc^T Xc of the part's rows"),
    _spec("cross", np.float32, ("T", "n"), "centred cross moments of the margins and the masks"),
    _spec("mean_y", np.float64, ("T",), "each target's mean margin"),
    _spec("syy", np.float64, ("T",), "each target's centred sum of squared margins"),
    _spec("sum_x", np.float64, ("n",), "the masks' column sums"),
)
MOMENTS_REBUILD = "rerun the workflow (the moments rule rebuilds it)"


def moment_file_names() -> list[str]:
    """The stems of the moments' ``.npy`` files, ``{name}_{part}``, parts first."""
    return [f"{spec.name}_{part}" for part in MOMENT_PARTS for spec in MOMENT_ARRAYS]


# --- the fit blocks and the datamodels --------------------------------------------------------------

FIT_ARRAYS = (
    _spec("weight", np.float32, ("n", "T"), "weight[i, t]: training example i's effect on target t (raw 0/1 masks)"),
    _spec("bias", np.float32, ("T",), "prediction = mask @ weight + bias"),
    _spec("lam", np.float64, ("T",), "the chosen lambda (lowest validation MSE)"),
    _spec("val_mse", np.float64, ("T",), "the validation MSE at the chosen lambda"),
    _spec("nnz", np.int64, ("T",), "non-zero weights"),
    _spec("flags", np.uint8, ("T",), describe(DATAMODEL_FLAGS)),
    _spec("lams", np.float64, ("L", "T"), "each target's lambda path"),
    _spec("train_mse", np.float64, ("L", "T"), "fit-row MSE along the path (NaN after an early stop)"),
    _spec("val_mse_path", np.float64, ("L", "T"), "validation MSE along the path (NaN after an early stop)"),
    _spec("nnz_path", np.int64, ("L", "T"), "non-zeros along the path (-1 after an early stop)"),
    _spec("num_fit_rows", np.int64, (), "rows the path was fitted on"),
    _spec("num_val_rows", np.int64, (), "rows the path was scored on"),
)
"""What ``dmflow.lasso.path.fit_from_moments`` returns: a fit block's and the datamodels' arrays."""
PER_TARGET = tuple(spec.name for spec in FIT_ARRAYS if spec.axes[-1:] == ("T",))
"""The fit's arrays whose last axis is the target (concatenated along it when blocks merge)."""

FIT_BLOCK_FORMAT = 1
FIT_BLOCK_ARRAYS = (
    *FIT_ARRAYS,
    _spec("targets", np.int64, ("T",), "the block's targets (columns of the store's margins)"),
    _spec("num_targets", np.int64, (), "the store's targets"),
    _spec("format", np.int64, (), "FIT_BLOCK_FORMAT"),
    _spec("provenance", np.str_, (), "JSON: the versions and machine that made it (dmflow.core.provenance)"),
)

DATAMODELS_FORMAT = 1
DATAMODELS_ARRAYS = (
    *FIT_ARRAYS,
    _spec("target_ids", np.int64, ("T",), "each target's id in the dataset's test set (data.npz)"),
    _spec("train_ids", np.int64, ("n",), "each training example's id in the dataset's training set"),
    _spec("format", np.int64, (), "DATAMODELS_FORMAT"),
    _spec("provenance", np.str_, (), "JSON: the versions and machine that made it (dmflow.core.provenance)"),
)
FIT_REBUILD = "remove it and rerun the workflow (the fit rules rebuild it)"


def check_arrays(
    specs: Sequence[ArraySpec], arrays: Mapping[str, np.ndarray], *, where: object, sizes: Mapping[str, int]
) -> None:
    """Check that ``arrays`` holds exactly the arrays of ``specs`` with their dtypes and shapes; raise
    StoreError in one line naming ``where`` and the first problem.

    Parameters
    ----------
    specs : sequence of ArraySpec
        The format (``FIT_BLOCK_ARRAYS``, ``DATAMODELS_ARRAYS``, ...).
    arrays : mapping of str to ndarray
        The file's arrays by name.
    where : str or Path
        The file, named in the message.
    sizes : mapping of str to int
        Known axis sizes (``m``, ``n``, ``replicates``, ``targets``, ``lambdas``); an axis left out is
        taken from the first array that has it and must agree in every other.
    """
    names = [spec.name for spec in specs]
    missing = [name for name in names if name not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        what = "; ".join(
            part
            for part in (missing and f"no {', '.join(missing)}", extra and f"unexpected {', '.join(extra)}")
            if part
        )
        raise StoreError(f"{where}: {what} (the format holds {', '.join(names)})")
    axes = {"m": "m", "n": "n", "R": "replicates", "T": "targets", "L": "lambdas"}
    known = {axis: sizes.get(key) for axis, key in axes.items()}
    for spec in specs:  # axes not given: from the first array of the right dtype and rank that has them
        got = np.asarray(arrays[spec.name])
        if got.dtype == spec.dtype and got.ndim == len(spec.axes):
            for axis, size in zip(spec.axes, got.shape):
                known[axis] = size if known.get(axis) is None else known[axis]
    for spec in specs:
        got = np.asarray(arrays[spec.name])
        want = [known.get(a) if known.get(a) is not None else a for a in spec.axes]
        text = spec.dtype.kind == "U" and got.dtype.kind == "U"  # unicode of any length
        if (got.dtype != spec.dtype and not text) or list(got.shape) != want:
            raise StoreError(
                f"{where}: {spec.name} is {got.dtype} {list(got.shape)}, the format has {spec.dtype.name} "
                f"{want} ({spec.meaning})"
            )


def _check_version(where: object, found: object, version: int, what: str, rebuild: str) -> None:
    if found != version:
        raise StoreError(f"{where}: {what} format {found}, this dmflow reads {version}; {rebuild}")


# --- the readers ---------------------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"
"""The first bytes of every ``.npy`` file."""


def _not_npy(head: bytes, what: str) -> str:
    """What a file that lacks numpy's magic is instead, by its first bytes."""
    if not head:
        return "is empty, not an .npy array"
    if head.startswith(b"PK\x03\x04"):
        return f"is an .npz archive; give {what} as one .npy array"
    if head[:1] == b"\x80":
        return "is a Python pickle, not an .npy array (dmflow never unpickles a file)"
    return f"is not an .npy file (it starts with {head[:8]!r}, not numpy's {NPY_MAGIC!r}); write it with np.save"


def open_npy(path: Path, what: str) -> np.ndarray:
    """One ``.npy`` array from outside dmflow (``what`` it should be, for the message), memory-mapped: only
    its header is read here, and it is never unpickled. A StoreError names the file when it is not one: not
    an ``.npy`` (by its first bytes), object (pickled) data, or a header whose shape is negative or claims
    other than the bytes the file holds."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if not head.startswith(NPY_MAGIC):
                raise StoreError(f"{path}: {_not_npy(head, what)}")
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            offset = fh.tell()
        size = path.stat().st_size
    except StoreError:
        raise
    except (ValueError, OSError, EOFError, OverflowError) as exc:
        raise StoreError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise StoreError(
            f"{path}: not a readable .npy array: it holds pickled (object) data; dmflow reads numbers only"
        )
    if any(d < 0 for d in shape):
        raise StoreError(f"{path}: not a readable .npy array: its header claims shape {list(shape)} (negative)")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != size - offset:
        raise StoreError(
            f"{path}: not a readable .npy array: its header claims shape {list(shape)} of {dtype} ({claimed} bytes) "
            f"but the file holds {size - offset} bytes of data (truncated or not written by np.save)"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, OverflowError) as exc:
        raise StoreError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    return array


@dataclass
class Store:
    """A read-only, memory-mapped view of one split's store (``open_store``).

    ``masks`` reads as bool [m, n] (``PackedMasks`` over the packed array, or any bool array).
    """

    path: Path | None
    manifest: dict
    masks: PackedMasks | np.ndarray
    margins: np.ndarray
    status: np.ndarray
    seeds: np.ndarray
    acc_target: np.ndarray
    acc_subset: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """bool [m, R]: the replicate trained without diverging."""
        return self.status == STATUS_OK


def read_store_manifest(path: Path) -> dict:
    """The manifest of the store folder ``path``, checked to be complete and of ``STORE_FORMAT``."""
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{path}: no manifest.json (the store is incomplete or absent; rerun collect or import-store)")
    manifest = load_json(manifest_path, rebuild="rerun the workflow (collect rebuilds it from the chunks)")
    _check_version(manifest_path, manifest.get("format"), STORE_FORMAT, "store", STORE_REBUILD)
    return manifest


def open_store(path: Path, verify: bool = True) -> Store:
    """Memory-map a store folder; with ``verify`` every array's sha256 must match the manifest."""
    path = Path(path)
    manifest = read_store_manifest(path)
    arrays = {}
    for spec in STORE_ARRAYS:
        file = path / f"{spec.name}.npy"
        meta = manifest["arrays"][spec.name]
        if verify and sha256_file(file) != meta["sha256"]:
            raise StoreError(f"{file}: sha256 differs from manifest.json (the store was modified or corrupted)")
        arrays[spec.name] = np.load(file, mmap_mode="r", allow_pickle=False)
        if list(arrays[spec.name].shape) != meta["shape"] or arrays[spec.name].dtype != spec.dtype:
            raise StoreError(
                f"{file}: {arrays[spec.name].dtype} {list(arrays[spec.name].shape)} differs from the "
                f"manifest's {meta['dtype']} {meta['shape']} (a store of an older dmflow? rerun collect)"
            )
    arrays["masks"] = PackedMasks(arrays["masks"], manifest["num_train"])
    return Store(path, manifest, **arrays)


def read_moments_manifest(path: Path) -> dict:
    """The manifest of the moments folder ``path``, checked to be complete and of ``MOMENTS_FORMAT``."""
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{path}: no manifest.json (the moments are incomplete; rerun the moments rule)")
    manifest = load_json(manifest_path, rebuild=MOMENTS_REBUILD)
    _check_version(manifest_path, manifest.get("format"), MOMENTS_FORMAT, "moments", f"remove it and {MOMENTS_REBUILD}")
    return manifest


def open_moments(
    path: Path, *, store_manifest: Path | None = None, workers: int = 1
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Memory-map a moments folder: ({part: {name: array}} for ``MOMENT_PARTS`` and ``MOMENT_ARRAYS``, manifest).

    Every array's sha256 (computed on ``workers`` threads), shape and dtype must match the manifest and
    ``MOMENT_ARRAYS``, and, given ``store_manifest``, the moments must come from that store as it is now;
    otherwise StoreError (one line).
    """
    path = Path(path)
    manifest = read_moments_manifest(path)
    if store_manifest is not None and sha256_file(store_manifest) != manifest["store_manifest_sha256"]:
        raise StoreError(
            f"{path}: these moments were computed from another version of the store "
            f"{Path(store_manifest).parent} (its manifest's sha256 differs); rerun the moments rule"
        )
    sizes = {"n": manifest["num_train"], "targets": manifest["num_targets"]}
    files = {key: path / f"{key}.npy" for key in moment_file_names()}
    for key, file in files.items():
        if key not in manifest["arrays"] or not file.is_file():
            raise StoreError(f"{file}: missing from the moments (rerun the moments rule)")
    for (key, file), digest in zip(files.items(), sha256_files(files.values(), workers=workers)):
        if digest != manifest["arrays"][key]["sha256"]:
            raise StoreError(f"{file}: sha256 differs from manifest.json (the moments were modified or corrupted)")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for part in MOMENT_PARTS:
        parts[part] = {}
        for spec in MOMENT_ARRAYS:
            file = files[f"{spec.name}_{part}"]
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            want = list(spec.shape(**sizes))
            if list(array.shape) != want or array.dtype != spec.dtype:
                raise StoreError(f"{file}: {array.dtype} {list(array.shape)}, expected {spec.dtype.name} {want}")
            parts[part][spec.name] = array
    return parts, manifest


def open_chunk(path: Path) -> dict[str, np.ndarray]:
    """A trained chunk's arrays (``CHUNK_ARRAYS``), checked: names, dtypes and shapes. Its bytes depend on the
    config alone, so it carries no version; the store it goes into does."""
    arrays = load_npz(Path(path), rebuild="remove it and rerun the workflow (train_chunk retrains it)")
    check_arrays(CHUNK_ARRAYS, arrays, where=path, sizes={})
    return arrays


def open_fit_block(path: Path) -> dict[str, np.ndarray]:
    """A fit block's arrays (``FIT_BLOCK_ARRAYS``), checked: format version, names, dtypes and shapes."""
    arrays = load_npz(Path(path), rebuild=FIT_REBUILD)
    _check_version(path, _version(arrays), FIT_BLOCK_FORMAT, "fit block", FIT_REBUILD)
    check_arrays(FIT_BLOCK_ARRAYS, arrays, where=path, sizes={})
    return arrays


@dataclass(frozen=True)
class Datamodels:
    """The datamodels of one alpha (``DATAMODELS_ARRAYS``; ``open_datamodels``): prediction = mask @ weight + bias."""

    weight: np.ndarray
    bias: np.ndarray
    lam: np.ndarray
    val_mse: np.ndarray
    nnz: np.ndarray
    flags: np.ndarray
    lams: np.ndarray
    train_mse: np.ndarray
    val_mse_path: np.ndarray
    nnz_path: np.ndarray
    num_fit_rows: np.ndarray
    num_val_rows: np.ndarray
    target_ids: np.ndarray
    train_ids: np.ndarray
    format: np.ndarray
    provenance: np.ndarray


def open_datamodels(path: Path) -> Datamodels:
    """The datamodels file ``datamodels/{alpha}.npz``, checked: format version, names, dtypes and shapes."""
    arrays = load_npz(Path(path), rebuild=FIT_REBUILD)
    essential = [
        spec.name for spec in FIT_ARRAYS[:3]
    ]  # weight, bias, lam: what a prediction and MadryLab's format need
    if missing := [name for name in essential if name not in arrays]:
        raise StoreError(f"{path}: not a datamodels file (no {', '.join(missing)}); give datamodels/ALPHA.npz")
    _check_version(path, _version(arrays), DATAMODELS_FORMAT, "datamodels", FIT_REBUILD)
    check_arrays(DATAMODELS_ARRAYS, arrays, where=path, sizes={})
    return Datamodels(**arrays)


def _version(arrays: Mapping[str, np.ndarray]) -> int | None:
    """A file's format version (its scalar ``format`` array); None without one (older than versions)."""
    found = arrays.get("format")
    return int(found) if found is not None and np.ndim(found) == 0 and found.dtype.kind in "iu" else None


def measured_seconds_per_model(layout: Layout) -> float | None:
    """The slowest training seconds per model among the trained chunks of a results folder (the records beside
    them, ``dmflow.core.layout.seconds_path``: ``train_seconds / models``), for the training jobs' time limits
    (``dmflow.core.layout.train_runtime_minutes``); None before any chunk has trained. An unreadable record
    is skipped: the time is informational only."""
    rates = []
    for path in glob.glob(Layout(glob.escape(layout.results)).trained_seconds("*", "*", "*")):
        try:
            record = load_json(Path(path), rebuild="retrain the chunk")
            rate = float(record["train_seconds"]) / int(record["models"])
        except (ValueError, KeyError, TypeError, ZeroDivisionError):  # FileError included
            continue
        if math.isfinite(rate) and rate > 0:
            rates.append(rate)
    return max(rates, default=None)
