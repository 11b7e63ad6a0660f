"""Rule of ``rules/collect.smk``: ``collect`` checks a split's trained chunks and writes its store;
``open_store`` reads a store back (memory-mapped, checksums verified). ``import_store`` (``dmflow
import-store``, no rule) writes a store of the same format from arrays trained elsewhere.

The store's arrays are ``dmflow.store.schema.STORE_ARRAYS``. They go to temporary
files first and the manifest is written last, so a store without ``manifest.json`` is
incomplete, and a bad chunk leaves any earlier store as it was.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmflow.core.codes import STATUS_OK
from dmflow.core.io import atomic_path, atomic_save_json, check_free_space, load_json, sha256_file
from dmflow.core.layout import Layout, seconds_path
from dmflow.core.seeds import chunk_seeds
from dmflow.store.masks import PackedMasks, pack
from dmflow.store.schema import (
    CHUNK_ARRAYS,
    STORE_ARRAYS,
    Store,
    StoreError,
    check_chunk,
    check_imported,
    check_imported_rows,
    check_imported_seeds,
    open_npy,
)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 2
"""2: the manifest carries its own checksum (``dmflow.core.io.SEAL``)."""


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


def _write_arrays(
    out_dir: Path,
    fill: Callable[[dict[str, np.ndarray]], None],
    *,
    m: int,
    n: int,
    num_targets: int,
    replicates: int,
    max_diverged_fraction: float,
    fields: dict,
) -> dict:
    """Write a store: every array of ``STORE_ARRAYS`` to a temporary memmap that ``fill`` fills (it may
    raise StoreError: nothing is written then), the diverged limit, then ``manifest.json`` last with
    ``fields`` and each array's shape, dtype and sha256; returns the manifest. The one store writer of
    ``collect`` and ``import_store``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = {spec.name: spec.shape(m=m, n=n, replicates=replicates, targets=num_targets) for spec in STORE_ARRAYS}
    with ExitStack() as renames:
        check_free_space(
            out_dir / "masks.npy",
            sum(math.prod(s) * spec.dtype.itemsize for spec, s in zip(STORE_ARRAYS, shapes.values())),
        )
        outs = {}
        for spec in STORE_ARRAYS:
            tmp = renames.enter_context(atomic_path(out_dir / f"{spec.name}.npy", ".npy"))
            outs[spec.name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=spec.dtype, shape=shapes[spec.name])
        fill(outs)
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
        **fields,
        "num_models": m,
        "num_train": n,
        "num_targets": num_targets,
        "replicates": replicates,
        "diverged": diverged,
        "diverged_fraction": diverged / total,
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


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove these folders (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


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
    chunks: list[dict] = []  # filled once every chunk has passed its checks
    seconds: list[float | None] = []
    fields = {"alpha": alpha, "split": split, "seed": seed, "chunk_size": chunk_size, "chunks": chunks}

    def fill(outs: dict[str, np.ndarray]) -> None:
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
            seconds.append(_chunk_seconds(spec.train_path))
        chunks.extend(
            {
                "index": s.index,
                "masks": os.fspath(s.masks_path),
                "train": os.fspath(s.train_path),
                "masks_sha256": sha256_file(s.masks_path),
                "train_sha256": sha256_file(s.train_path),
            }
            for s in specs
        )
        fields["train_seconds"] = _total_seconds(seconds)

    return _write_arrays(
        out_dir,
        fill,
        m=chunk_size * len(specs),
        n=n,
        num_targets=num_targets,
        replicates=replicates,
        max_diverged_fraction=max_diverged_fraction,
        fields=fields,
    )


def _chunk_seconds(train_path: Path) -> float | None:
    """A chunk's training wall-seconds from the record beside it (``seconds_path``); None without one."""
    try:
        record = load_json(Path(seconds_path(train_path)), rebuild="retrain the chunk", sealed=False)
        return float(record["train_seconds"])
    except (ValueError, KeyError, TypeError):  # FileError included: the time is informational only
        return None


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


def _total_seconds(seconds: Sequence[float | None]) -> float | None:
    """The chunks' training wall-seconds summed; None when a chunk did not record them."""
    return None if not seconds or any(s is None for s in seconds) else float(sum(seconds))


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


IMPORT_SPLITS = ("fit", "eval")
IMPORT_BLOCK_ROWS = 8192
"""Rows checked, converted and written at a time by ``import_store``."""


def import_store(
    masks: Path,
    margins: Path,
    out_dir: Path,
    *,
    alpha: float,
    split: str,
    status: Path | None = None,
    seeds: Path | None = None,
    max_diverged_fraction: float = 0.05,
) -> dict:
    """Write a store in dmflow's own format (bit-packed masks, float32 margins, status, seeds, manifest
    with sha256) from arrays trained elsewhere, checked as strictly as dmflow's own chunks; returns
    the manifest. The moments, fit, evaluate stages and the analyses read it like a collected store.

    Shapes and dtypes are checked from the files' headers before any work, then every block of
    rows as it is copied; each problem is one StoreError line naming the file (and row), and a
    failed import leaves no file and any earlier store as it was.

    Parameters
    ----------
    masks : Path
        ``.npy`` bool or 0/1 integers [m, n]: model i trained on the examples where row i is 1;
        every row must hold round(alpha * n) ones.
    margins : Path
        ``.npy`` integers or floats [m, T] (one replicate) or [m, R, T] (R retrainings of each mask),
        stored as float32.
    out_dir : Path
        The store folder, e.g. ``results/x/store/0.5/fit`` (``Layout.store``).
    alpha : float
        The subset fraction (the folder's alpha; it also keys the fit's validation split).
    split : str
        ``fit`` or ``eval``.
    status : Path, optional
        ``.npy`` integers [m, R], 0 ok or 1 diverged; margins of ok models must be finite. Without
        it, a model (row, replicate) with any NaN or infinite margin is marked diverged, as
        dmflow's training marks its own, and the others ok.
    seeds : Path, optional
        ``.npy`` integers [m, R], recorded as each model's seed; without it, -1 (unknown).
    max_diverged_fraction : float
        Above this share of diverged models, no store is written (as ``collect``).
    """
    if split not in IMPORT_SPLITS:
        raise StoreError(f"split {split!r}: a store is imported as split fit or eval")
    paths = {"masks": Path(masks), "margins": Path(margins), "status": status, "seeds": seeds}
    paths = {key: Path(value) for key, value in paths.items() if value is not None}
    sources = {key: open_npy(path, key) for key, path in paths.items()}
    names = {key: str(path) for key, path in paths.items()}
    m, n, replicates, num_targets = check_imported(sources, alpha=alpha, names=names)
    if split == "eval" and replicates < 2:
        log.warning("%s: one replicate per eval mask: no noise ceiling can be measured", paths["margins"])

    def fill(outs: dict[str, np.ndarray]) -> None:
        for start in range(0, m, IMPORT_BLOCK_ROWS):
            rows = slice(start, min(start + IMPORT_BLOCK_ROWS, m))
            block_masks, block_margins, block_status = check_imported_rows(
                np.asarray(sources["masks"][rows]),
                np.asarray(sources["margins"][rows]),
                None if "status" not in sources else np.asarray(sources["status"][rows]),
                first_row=start,
                alpha=alpha,
                names=names,
            )
            outs["masks"][rows] = pack(block_masks)
            outs["margins"][rows] = block_margins
            outs["status"][rows] = block_status
            outs["seeds"][rows] = (
                check_imported_seeds(sources["seeds"][rows], first_row=start, names=names) if "seeds" in sources else -1
            )
            outs["acc_target"][rows] = np.nan
            outs["acc_subset"][rows] = np.nan
        imported.update({key: {"path": os.fspath(path), "sha256": sha256_file(path)} for key, path in paths.items()})

    imported: dict[str, dict] = {}  # filled once every row has passed its checks
    created = [folder for folder in (Path(out_dir), *Path(out_dir).parents) if not folder.exists()]  # deepest first
    try:
        manifest = _write_arrays(
            out_dir,
            fill,
            m=m,
            n=n,
            num_targets=num_targets,
            replicates=replicates,
            max_diverged_fraction=max_diverged_fraction,
            fields={
                "alpha": alpha,
                "split": split,
                "seed": None,
                "chunk_size": None,
                "chunks": [],
                "imported": imported,
            },
        )
    except BaseException:
        _remove_empty(created)  # a failed import leaves no folder it created
        raise
    log.info("imported %s: %d models x %d replicates, n=%d, T=%d", out_dir, m, replicates, n, num_targets)
    return manifest


def open_store(path: Path, verify: bool = True) -> Store:
    """Memory-map a store; with ``verify`` every array's sha256 must match the manifest."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{path}: no manifest.json (the store is incomplete; rerun collect)")
    manifest = load_json(manifest_path, rebuild="rerun the workflow (collect rebuilds it from the chunks)")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StoreError(
            f"{manifest_path}: store format {manifest.get('format')}, this dmflow reads {MANIFEST_FORMAT}; "
            "remove it and rerun the workflow (collect rebuilds it from the chunks)"
        )
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
