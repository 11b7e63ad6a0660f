"""Rules of ``rules/fit.smk``: ``fit_block`` fits one block of targets from the fit store;
``merge_fit`` joins the blocks into ``datamodels/{alpha}.npz``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmflow.core.codes import FLAG_OK
from dmflow.core.io import atomic_save_npz, load_npz
from dmflow.core.layout import block_targets
from dmflow.lasso.path import FitSettings, fit_targets, split_validation_rows, zero_datamodels
from dmflow.stages.collect import open_store
from dmflow.store.schema import usable_rows

log = logging.getLogger(__name__)

PER_TARGET = ("weight", "bias", "lam", "val_mse", "nnz", "flags", "lams", "train_mse", "val_mse_path", "nnz_path")
"""The arrays of a fit block whose last axis is the target."""


def fit_store_block(store_path: Path, block: int, *, targets_per_job: int, settings: FitSettings, seed: int) -> dict:
    """The datamodels of one block of targets (``fit_targets``' arrays, plus ``targets``) from a fit store."""
    store = open_store(store_path)
    targets = block_targets(block, targets_per_job, store.manifest["num_targets"])
    rows = usable_rows(store.status)
    margins = store.margins[:, 0, targets[0] : targets[-1] + 1]
    if len(rows) < 3:
        log.warning("%s: only %d usable rows; every target gets zero weights", store_path, len(rows))
        result = zero_datamodels(store.masks.shape[1], len(targets), settings.num_lambdas)
    else:
        fit_rows, val_rows = split_validation_rows(
            rows, settings.val_fraction, seed=seed, alpha=store.manifest["alpha"]
        )
        result = fit_targets(store.masks, margins, fit_rows=fit_rows, val_rows=val_rows, settings=settings)
    result["targets"] = targets
    return result


def fit_block(
    store: Path, out: Path, *, block: int, targets_per_job: int, settings: FitSettings, seed: int, threads: int = 1
) -> dict[str, np.ndarray]:
    """Fit one block of targets on ``threads`` torch threads and write ``block{b}.npz`` atomically."""
    torch.set_num_threads(max(1, int(threads)))
    result = fit_store_block(store, block, targets_per_job=targets_per_job, settings=settings, seed=seed)
    flagged = int((result["flags"] != FLAG_OK).sum())
    log.info(
        "block %d: %d targets, mean nnz %.1f, %d flagged", block, len(result["targets"]), result["nnz"].mean(), flagged
    )
    atomic_save_npz(Path(out), result)
    return result


def merge_fit(blocks: Sequence[Path], data: Path, out: Path) -> dict[str, np.ndarray]:
    """Concatenate the blocks in target order into the datamodels file, with target and training ids."""
    parts = sorted((load_npz(p) for p in blocks), key=lambda b: int(b["targets"][0]))
    targets = np.concatenate([b["targets"] for b in parts])
    arrays = load_npz(data)
    if not np.array_equal(targets, np.arange(len(arrays["target_ids"]))):
        raise ValueError(
            f"blocks cover targets {targets.min()}..{targets.max()} ({len(targets)}), "
            f"expected 0..{len(arrays['target_ids']) - 1}"
        )
    merged = {}
    for key in PER_TARGET:
        axis = parts[0][key].ndim - 1  # targets are the last axis of every per-target array
        merged[key] = np.concatenate([b[key] for b in parts], axis=axis)
    merged["target_ids"] = arrays["target_ids"]
    merged["train_ids"] = arrays["train_ids"]
    merged["num_fit_rows"] = parts[0]["num_fit_rows"]
    merged["num_val_rows"] = parts[0]["num_val_rows"]
    atomic_save_npz(Path(out), merged)
    return merged
