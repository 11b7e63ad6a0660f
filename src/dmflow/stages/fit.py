"""Rules of ``rules/fit.smk``: ``fit_block`` fits one block of targets from the fit store's moments;
``merge_fit`` joins the blocks into ``datamodels/{alpha}.npz``. ``export_datamodels`` (``dmflow
export``, no rule) writes them in another tool's format."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmflow.core import provenance
from dmflow.core.budgets import check_memory, fit_bytes
from dmflow.core.codes import FLAG_OK
from dmflow.core.errors import StoreError
from dmflow.core.io import atomic_path, atomic_save_npz, check_new_output, load_npz
from dmflow.core.layout import alpha_dir, block_targets
from dmflow.core.progress import Progress
from dmflow.core.schema import defaults
from dmflow.lasso.moments import CountMoments
from dmflow.lasso.path import fit_from_moments
from dmflow.lasso.settings import FitSettings
from dmflow.store.formats import (
    DATAMODELS_ARRAYS,
    DATAMODELS_FORMAT,
    FIT_ARRAYS,
    FIT_BLOCK_ARRAYS,
    FIT_BLOCK_FORMAT,
    MOMENT_ARRAYS,
    PER_TARGET,
    check_arrays,
    open_datamodels,
    open_fit_block,
    open_moments,
    read_moments_manifest,
)

log = logging.getLogger(__name__)


def _count_moments(arrays: dict[str, np.ndarray], count: int, *, lip: float | None, mu: float | None) -> CountMoments:
    """One part of the moments (``open_moments``' arrays of ``MOMENT_ARRAYS``) as the solvers' ``CountMoments``."""
    gram, cross, mean_y, syy, sum_x = (arrays[spec.name] for spec in MOMENT_ARRAYS)
    return CountMoments(count, (gram,), np.asarray(sum_x), np.asarray(mean_y), cross, np.asarray(syy), lip, mu)


def fit_moments_block(
    moments_dir: Path,
    block: int,
    *,
    targets_per_job: int,
    settings: FitSettings,
    store_manifest: Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """The datamodels of one block of targets (``fit_from_moments``' arrays, plus ``targets`` and the
    store's ``num_targets``) from the store's moments; the masks are never read."""
    parts, manifest = open_moments(moments_dir, store_manifest=store_manifest, workers=torch.get_num_threads())
    fit = _count_moments(
        parts["fit"],
        manifest["counts"]["fit"],
        lip=manifest["top_eigenvalue"]["fit"],
        mu=manifest["bottom_eigenvalue"]["fit"],
    )
    val = _count_moments(parts["val"], manifest["counts"]["val"], lip=None, mu=None)
    targets = block_targets(block, targets_per_job, manifest["num_targets"])
    if manifest["val_fraction"] != settings.val_fraction:
        raise StoreError(
            f"{moments_dir}: the moments split the rows with fit.val_fraction={manifest['val_fraction']}, "
            f"not {settings.val_fraction}; rerun the moments rule"
        )
    result = fit_from_moments(
        fit.select(targets),
        val.select(targets),
        settings=settings,
        all_rows_lip=manifest["top_eigenvalue"]["all"],
        all_rows_mu=manifest["bottom_eigenvalue"]["all"],
        progress=progress,
    )
    result["targets"] = targets
    result["num_targets"] = np.int64(manifest["num_targets"])
    result["format"] = np.int64(FIT_BLOCK_FORMAT)
    result[provenance.KEY] = provenance.as_array(provenance.provenance(device=settings.torch_device))
    check_arrays(FIT_BLOCK_ARRAYS, result, where=f"the fit of block {block}", sizes={"targets": len(targets)})
    return result


def fit_block(
    moments: Path,
    out: Path,
    *,
    block: int,
    targets_per_job: int,
    settings: FitSettings,
    store_manifest: Path | None = None,
    threads: int | None = None,
    mem_mb: int | None = None,
) -> dict[str, np.ndarray]:
    """Fit one block of targets from the fit store's moments on ``threads`` torch threads and write
    ``block{b}.npz`` atomically, with a ``provenance`` member (``dmflow.core.provenance.as_array``).
    ``store_manifest`` ties the moments to their store; ``mem_mb`` (the
    job's memory) is checked against what the block can need, before any work."""
    sizes = read_moments_manifest(Path(moments))
    n = sizes["num_train"]
    # a block holds min(targets_per_job, T) targets at most, as the rule sizes it (rules/common.smk's fit_mem_mb)
    threads = defaults("fit")["threads"] if threads is None else threads
    needed = fit_bytes(n, min(targets_per_job, sizes["num_targets"]), threads=threads, device=settings.torch_device)
    check_memory(needed, mem_mb, f"fit jobs of n={n} training examples")
    torch.set_num_threads(max(1, int(threads)))
    targets = len(block_targets(block, targets_per_job, sizes["num_targets"]))
    progress = Progress(f"fit_block {alpha_dir(sizes['alpha'])}/{int(block):04d}", targets, "targets")
    result = fit_moments_block(
        moments,
        block,
        targets_per_job=targets_per_job,
        settings=settings,
        store_manifest=store_manifest,
        progress=progress,
    )
    made_by = provenance.read(result)
    provenance.note_changes(made_by, [(f"the moments {moments}", sizes)], subject=f"fit block {block}")
    flagged = int((result["flags"] != FLAG_OK).sum())
    log.info(
        "block %d: %d targets, mean nnz %.1f, %d flagged", block, len(result["targets"]), result["nnz"].mean(), flagged
    )
    atomic_save_npz(Path(out), result)
    progress.finish()
    return result


def merge_fit(blocks: Sequence[Path], data: Path | None, out: Path) -> dict[str, np.ndarray]:
    """Concatenate the blocks in target order into the datamodels file, with target and training ids
    (from ``data.npz``; without it, for a store imported from elsewhere, 0..T-1 and 0..n-1, and the
    blocks must cover every target of their moments)."""
    parts = sorted((open_fit_block(Path(p)) for p in blocks), key=lambda b: int(b["targets"][0]))
    targets = np.concatenate([b["targets"] for b in parts])
    if data is not None:
        arrays = load_npz(data)
    else:
        arrays = {
            "target_ids": np.arange(int(parts[0]["num_targets"])),
            "train_ids": np.arange(len(parts[0]["weight"])),
        }
    if not np.array_equal(targets, np.arange(len(arrays["target_ids"]))):
        raise ValueError(
            f"blocks cover targets {targets.min()}..{targets.max()} ({len(targets)}), "
            f"expected 0..{len(arrays['target_ids']) - 1}"
        )
    merged = {}
    for spec in FIT_ARRAYS:  # targets are the last axis of every per-target array; the rest is the same in each block
        merged[spec.name] = (
            np.concatenate([b[spec.name] for b in parts], axis=-1) if spec.name in PER_TARGET else parts[0][spec.name]
        )
    merged["target_ids"] = arrays["target_ids"]
    merged["train_ids"] = arrays["train_ids"]
    # the fit's provenance: the first block's, with one line if another block's differs
    first = provenance.read(parts[0])
    merged[provenance.KEY] = provenance.as_array(first)
    provenance.note_changes(
        first,
        [(f"the fit block of target {int(b['targets'][0])}", b) for b in parts[1:]],
        subject="the first fit block",
    )
    merged["format"] = np.int64(DATAMODELS_FORMAT)
    check_arrays(DATAMODELS_ARRAYS, merged, where=out, sizes={})
    atomic_save_npz(Path(out), merged)
    return merged


EXPORT_FORMATS = ("madrylab",)


def export_datamodels(
    datamodels: Path, out: Path, *, format: str = "madrylab", force: bool = False, results: Path | None = None
) -> dict[str, torch.Tensor]:
    """Write the datamodels for other tools; returns what was written.

    ``madrylab``: a ``torch.save`` dict as the official datamodels repository (MadryLab/datamodels)
    hands out its datamodels, ``weight`` float32 [n, T], ``bias`` float32 [T] and ``lam`` float32
    [T], plain CPU tensors that ``torch.load(out, weights_only=True)`` reads. The prediction for a
    0/1 mask is ``mask @ weight + bias``, as in dmflow.

    Parameters
    ----------
    datamodels : Path
        ``datamodels/{alpha}.npz`` (weight float32 [n, T], bias [T], lam [T]).
    out : Path
        The ``.pt`` file, written atomically.
    format : str
        One of ``EXPORT_FORMATS``.
    force : bool
        Replace ``out`` if it is an existing regular file (``check_new_output``: never anything else).
    results : Path, optional
        The run's results folder, where nothing is written; by default the folder above
        ``datamodels/`` when the file lies in one.
    """
    if format not in EXPORT_FORMATS:
        raise StoreError(f"export format {format!r}: supported are {', '.join(EXPORT_FORMATS)}")
    if not Path(datamodels).is_file():
        raise StoreError(f"{datamodels}: no datamodels file (has the fit finished?)")
    if results is None and Path(datamodels).resolve().parent.name == "datamodels":
        results = Path(datamodels).resolve().parent.parent
    check_new_output(Path(out), force=force, inside=results)
    dm = open_datamodels(Path(datamodels))
    tensors = {
        key: torch.from_numpy(np.ascontiguousarray(getattr(dm, key), dtype=np.float32))
        for key in ("weight", "bias", "lam")  # the keys of MadryLab's format
    }
    with atomic_path(Path(out), Path(out).suffix) as tmp:
        torch.save(tensors, tmp)
    log.info("exported %s as %s: weight %s", datamodels, out, list(tensors["weight"].shape))
    return tensors
