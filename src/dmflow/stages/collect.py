"""Rule of ``rules/collect.smk``: ``collect`` checks a split's trained chunks and writes its store;
``open_store`` reads a store back (memory-mapped, checksums verified).

The store's arrays are ``dmflow.store.schema.STORE_ARRAYS``. They go to temporary
files first and the manifest is written last, so a store without ``manifest.json`` is
incomplete, and a bad chunk leaves any earlier store as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmflow.core.codes import STATUS_OK
from dmflow.core.io import atomic_path, atomic_save_json, sha256_file
from dmflow.core.seeds import chunk_seeds
from dmflow.store.masks import PackedMasks, pack
from dmflow.store.schema import CHUNK_ARRAYS, STORE_ARRAYS, Store, StoreError, check_chunk

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class ChunkSpec:
    """Where one chunk's files are, and its index (which seeds it must hold)."""

    index: int
    masks_path: Path
    train_path: Path


def chunk_index(path: str | Path) -> int:
    """A chunk's index: the number that ends its masks file name (``.../00012.npy`` -> 12)."""
    match = re.search(r"(\d+)$", Path(path).stem)
    if not match:
        raise StoreError(f"{path}: the masks file name must end in the chunk index")
    return int(match.group(1))


def _load_chunk(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise StoreError(f"{path}: unreadable chunk file ({type(exc).__name__}: {exc})") from None


def _load_masks(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(f"{path}: unreadable mask file ({exc})") from None


def write_store(
    specs: Sequence[ChunkSpec],
    out_dir: Path,
    *,
    n: int,
    num_targets: int,
    alpha: float,
    split: str,
    seed: int,
    replicates: int,
    chunk_size: int,
    max_diverged_fraction: float,
) -> dict:
    """Check every chunk while writing the store of n training examples and ``num_targets`` targets;
    returns the manifest.

    Diverged models stay in the store (status 1) and are left out downstream. When more
    than ``max_diverged_fraction`` of them diverged, no store is written and StoreError
    says so: the run fails here, not with meaningless datamodels. The chunks are kept.
    """
    specs = sorted(specs, key=lambda s: s.index)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = chunk_size * len(specs)
    shapes = {spec.name: spec.shape(m=m, n=n, replicates=replicates, targets=num_targets) for spec in STORE_ARRAYS}
    with ExitStack() as renames:
        outs = {}
        for spec in STORE_ARRAYS:
            tmp = renames.enter_context(atomic_path(out_dir / f"{spec.name}.npy", ".npy"))
            outs[spec.name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=spec.dtype, shape=shapes[spec.name])
        for i, spec in enumerate(specs):
            masks, arrays = _load_masks(spec.masks_path), _load_chunk(spec.train_path)
            check_chunk(
                masks,
                arrays,
                n=n,
                alpha=alpha,
                num_targets=num_targets,
                masks_path=spec.masks_path,
                train_path=spec.train_path,
                expected_seeds=chunk_seeds(
                    seed, alpha, split, chunk=spec.index, rows=chunk_size, replicates=replicates
                ),
            )
            rows = slice(i * chunk_size, (i + 1) * chunk_size)
            outs["masks"][rows] = pack(masks)
            for array in CHUNK_ARRAYS:
                outs[array.name][rows] = arrays[array.name]
        diverged = int((outs["status"] != STATUS_OK).sum())
        if diverged > max_diverged_fraction * outs["status"].size:
            raise StoreError(
                f"{out_dir}: {diverged} of {outs['status'].size} models diverged ({100 * diverged / outs['status'].size:.1f}%, "
                f"more than train.max_diverged_fraction={max_diverged_fraction}); no store was written: check the "
                "training settings (lr, optimizer, precision), or raise train.max_diverged_fraction to fit the rest"
            )
        for array in outs.values():
            array.flush()
        del outs
        (out_dir / "manifest.json").unlink(missing_ok=True)
    total = m * replicates
    manifest = {
        "format": MANIFEST_FORMAT,
        "alpha": alpha,
        "split": split,
        "seed": seed,
        "num_models": m,
        "num_train": n,
        "num_targets": num_targets,
        "replicates": replicates,
        "chunk_size": chunk_size,
        "diverged": diverged,
        "diverged_fraction": diverged / total,
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
        "arrays": {
            spec.name: {
                "shape": list(shapes[spec.name]),
                "dtype": spec.dtype.name,
                "sha256": sha256_file(out_dir / f"{spec.name}.npy"),
            }
            for spec in STORE_ARRAYS
        },
    }
    atomic_save_json(out_dir / "manifest.json", manifest)
    if diverged:
        log.info("%s: %d of %d models diverged; they are left out", out_dir, diverged, total)
    return manifest


def collect(
    masks: Sequence[Path],
    trained: Sequence[Path],
    out_dir: Path,
    *,
    data: Path,
    alpha: float,
    split: str,
    seed: int,
    replicates: int,
    chunk_size: int,
    max_diverged_fraction: float,
) -> dict:
    """Write the store of one (alpha, split) from its chunks' masks and trained files (paired in order;
    a chunk's index ends its masks file name); n and T come from ``data.npz``."""
    if len(masks) != len(trained):
        raise StoreError("--masks and --trained need the same number of files")
    with np.load(data, allow_pickle=False) as f:
        n, num_targets = f["y_train"].shape[0], f["y_target"].shape[0]
    specs = [ChunkSpec(chunk_index(m), Path(m), Path(t)) for m, t in zip(masks, trained)]
    return write_store(
        specs,
        out_dir,
        n=n,
        num_targets=num_targets,
        alpha=alpha,
        split=split,
        seed=seed,
        replicates=replicates,
        chunk_size=chunk_size,
        max_diverged_fraction=max_diverged_fraction,
    )


def open_store(path: Path, verify: bool = True) -> Store:
    """Memory-map a store; with ``verify`` every array's sha256 must match the manifest."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{path}: no manifest.json (the store is incomplete; rerun collect)")
    manifest = json.loads(manifest_path.read_text())
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
