"""Stage collect: validate every trained chunk and assemble a split's store.

The store of one (alpha, split) is a folder of memory-mappable ``.npy`` arrays

    masks.npy       bool    [m, n]      training subset of each model row
    margins.npy     float32 [m, R, T]   margin of each replicate on each target
    status.npy      uint8   [m, R]      0 ok, 1 diverged
    seeds.npy       int64   [m, R]
    acc_target.npy  float32 [m, R]      accuracy on the targets
    acc_subset.npy  float32 [m, R]      accuracy on the model's own subset

plus ``manifest.json`` (shapes, the chunk list with sha256 of its input files, the
sha256 of every array, and the diverged count). The manifest is written last, so a
store without one is incomplete.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmflow.io import atomic_path, atomic_save_json, sha256_file
from dmflow.masks import subset_size
from dmflow.seeds import chunk_seeds

log = logging.getLogger(__name__)

STATUS_OK = 0
STATUS_DIVERGED = 1

ARRAYS = ("masks", "margins", "status", "seeds", "acc_target", "acc_subset")
CHUNK_KEYS = {
    "margins": np.float32,
    "acc_target": np.float32,
    "acc_subset": np.float32,
    "seeds": np.int64,
    "status": np.uint8,
}


class StoreError(ValueError):
    """A chunk or store that fails validation; the message names the file and the problem."""


@dataclass(frozen=True)
class ChunkSpec:
    """Where one chunk's files are and which seeds it must hold."""

    index: int
    masks_path: Path
    train_path: Path


def _load_chunk(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise StoreError(f"{path}: unreadable chunk file ({type(exc).__name__}: {exc})") from None


def validate_chunk(
    spec: ChunkSpec,
    n: int,
    alpha: float,
    split: str,
    seed: int,
    replicates: int,
    num_targets: int,
    chunk_size: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Load a chunk's masks and results and check every promise; raise StoreError if one fails."""
    try:
        masks = np.load(spec.masks_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(f"{spec.masks_path}: unreadable mask file ({exc})") from None
    if masks.dtype != np.bool_ or masks.shape != (chunk_size, n):
        raise StoreError(f"{spec.masks_path}: masks must be bool [{chunk_size}, {n}], got {masks.dtype} {list(masks.shape)}")
    k = subset_size(alpha, n)
    bad_rows = np.flatnonzero(masks.sum(axis=1) != k)
    if bad_rows.size:
        raise StoreError(f"{spec.masks_path}: row {bad_rows[0]} has {masks[bad_rows[0]].sum()} ones, expected {k}")
    chunk = _load_chunk(spec.train_path)
    missing = sorted(set(CHUNK_KEYS) - set(chunk))
    if missing:
        raise StoreError(f"{spec.train_path}: missing array(s) {', '.join(missing)}")
    shapes = {"margins": (chunk_size, replicates, num_targets)}
    for key, dtype in CHUNK_KEYS.items():
        want = shapes.get(key, (chunk_size, replicates))
        if chunk[key].dtype != dtype or chunk[key].shape != want:
            raise StoreError(
                f"{spec.train_path}: {key} must be {np.dtype(dtype).name} {list(want)}, "
                f"got {chunk[key].dtype} {list(chunk[key].shape)}"
            )
    expected = chunk_seeds(seed, alpha, split, spec.index, chunk_size, replicates)
    if not np.array_equal(chunk["seeds"], expected):
        raise StoreError(f"{spec.train_path}: seeds differ from those of (seed={seed}, alpha={alpha}, split={split}, chunk={spec.index})")
    if not np.isin(chunk["status"], (0, 1)).all():
        raise StoreError(f"{spec.train_path}: status holds values other than 0 (ok) and 1 (diverged)")
    ok = chunk["status"] == STATUS_OK
    if not np.isfinite(chunk["margins"][ok]).all():
        raise StoreError(f"{spec.train_path}: non-finite margins in models marked ok")
    return masks, chunk


def collect(
    specs: Sequence[ChunkSpec],
    out_dir: Path,
    n: int,
    alpha: float,
    split: str,
    seed: int,
    replicates: int,
    num_targets: int,
    chunk_size: int,
    max_diverged_fraction: float = 0.05,
) -> dict:
    """Validate every chunk while writing the store; returns the manifest.

    Diverged models stay in the store (status 1) and are left out downstream; more
    than ``max_diverged_fraction`` of them earns a warning in the log and the manifest.

    Arrays go to temporary files first: a bad chunk leaves any earlier store as it was.
    """
    specs = sorted(specs, key=lambda s: s.index)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = chunk_size * len(specs)
    shapes = {
        "masks": ((m, n), np.bool_),
        "margins": ((m, replicates, num_targets), np.float32),
        "status": ((m, replicates), np.uint8),
        "seeds": ((m, replicates), np.int64),
        "acc_target": ((m, replicates), np.float32),
        "acc_subset": ((m, replicates), np.float32),
    }
    with ExitStack() as renames:
        outs = {}
        for name, (shape, dtype) in shapes.items():
            tmp = renames.enter_context(atomic_path(out_dir / f"{name}.npy", ".npy"))
            outs[name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        for i, spec in enumerate(specs):
            masks, chunk = validate_chunk(spec, n, alpha, split, seed, replicates, num_targets, chunk_size)
            rows = slice(i * chunk_size, (i + 1) * chunk_size)
            outs["masks"][rows] = masks
            for key in CHUNK_KEYS:
                outs[key][rows] = chunk[key]
        for array in outs.values():
            array.flush()
        del outs
        (out_dir / "manifest.json").unlink(missing_ok=True)
    arrays_sha = {}
    for name in ARRAYS:
        arrays_sha[name] = sha256_file(out_dir / f"{name}.npy")
    status = np.load(out_dir / "status.npy", mmap_mode="r")
    manifest = {
        "format": 1,
        "alpha": alpha,
        "split": split,
        "seed": seed,
        "num_models": m,
        "num_train": n,
        "num_targets": num_targets,
        "replicates": replicates,
        "chunk_size": chunk_size,
        "diverged": int((status != STATUS_OK).sum()),
        "diverged_fraction": float((status != STATUS_OK).mean()),
        "diverged_warning": bool((status != STATUS_OK).mean() > max_diverged_fraction),
        "chunks": [
            {
                "index": s.index,
                "masks": os.fspath(s.masks_path),
                "train": os.fspath(s.train_path),
                "masks_sha256": sha256_file(s.masks_path),
                "train_sha256": sha256_file(s.train_path),
            }
            for s in specs
        ],
        "arrays": {name: {"shape": list(shapes[name][0]), "dtype": np.dtype(shapes[name][1]).name, "sha256": arrays_sha[name]} for name in ARRAYS},
    }
    atomic_save_json(out_dir / "manifest.json", manifest)
    if manifest["diverged_fraction"] > max_diverged_fraction:
        log.warning("%s: %d of %d models diverged (%.1f%%, more than train.max_diverged_fraction=%g); "
                    "they are left out, but check the training settings", out_dir, manifest["diverged"],
                    status.size, 100 * manifest["diverged_fraction"], max_diverged_fraction)
    elif manifest["diverged"]:
        log.info("%s: %d of %d models diverged; they are left out", out_dir, manifest["diverged"], status.size)
    return manifest


@dataclass
class Store:
    """A read-only, memory-mapped view of one split's store."""

    path: Path
    manifest: dict
    masks: np.ndarray
    margins: np.ndarray
    status: np.ndarray
    acc_target: np.ndarray
    acc_subset: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """bool [m, R]: the replicate trained without diverging."""
        return self.status == STATUS_OK


def open_store(path: Path, verify: bool = True) -> Store:
    """Memory-map a store; with ``verify`` every array's sha256 must match the manifest."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{path}: no manifest.json (the store is incomplete; rerun collect)")
    manifest = json.loads(manifest_path.read_text())
    arrays = {}
    for name in ARRAYS:
        file = path / f"{name}.npy"
        meta = manifest["arrays"][name]
        if verify and sha256_file(file) != meta["sha256"]:
            raise StoreError(f"{file}: sha256 differs from manifest.json (the store was modified or corrupted)")
        arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
        if list(arrays[name].shape) != meta["shape"]:
            raise StoreError(f"{file}: shape {list(arrays[name].shape)} differs from manifest {meta['shape']}")
    return Store(path, manifest, arrays["masks"], arrays["margins"], arrays["status"], arrays["acc_target"], arrays["acc_subset"])
