"""Rule of ``rules/train.smk``: ``train_chunk`` trains every model of one chunk."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from dmflow.core.codes import STATUS_OK
from dmflow.core.device import resolve_device
from dmflow.core.io import atomic_save_json, atomic_save_npz, load_npz
from dmflow.core.layout import alpha_dir, seconds_path
from dmflow.core.progress import Progress
from dmflow.core.provenance import provenance
from dmflow.core.seeds import chunk_seeds
from dmflow.store.masks import check_chunk_masks
from dmflow.training.settings import TrainSettings
from dmflow.training.train import train_chunk as train_models

log = logging.getLogger(__name__)


def train_chunk(
    data: Path,
    masks: Path,
    out: Path,
    *,
    seed: int,
    alpha: float,
    split: str,
    chunk: int,
    replicates: int,
    settings: TrainSettings,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """Train the chunk's masks ``replicates`` times each (seeds from (seed, alpha, split, chunk, row,
    replicate)) on ``threads`` torch threads; write the trained chunk file atomically, then beside it
    (``dmflow.core.layout.seconds_path``) the training's wall-seconds as ``{"train_seconds": s, "models":
    rows x replicates, "provenance": ...}`` (``dmflow.core.provenance``): not in the chunk, whose bytes depend on the config alone, and not a rule output,
    so that chunks trained before it existed are not retrained."""
    torch.set_num_threads(max(1, int(threads)))
    arrays = load_npz(data)
    mask_rows = np.load(masks, allow_pickle=False)
    check_chunk_masks(
        mask_rows, Path(masks), arrays["y_train"].shape[0], alpha=alpha, split=split, chunk=chunk, seed=seed
    )
    seeds = chunk_seeds(seed, alpha, split, chunk=chunk, rows=mask_rows.shape[0], replicates=replicates)
    start = time.perf_counter()
    progress = Progress(f"train_chunk {alpha_dir(alpha)}/{split}/{int(chunk):05d}", seeds.size, "models")
    result = train_models(arrays, mask_rows, seeds, settings=settings, progress=progress)
    elapsed = time.perf_counter() - start
    diverged = int((result["status"] != STATUS_OK).sum())
    if diverged:
        log.warning("%d of %d models diverged in %s", diverged, result["status"].size, out)
    atomic_save_npz(Path(out), result)
    record = {
        "train_seconds": elapsed,
        "models": int(seeds.size),
        "provenance": provenance(device=resolve_device(settings.device, "train.device")),
    }
    atomic_save_json(Path(seconds_path(out)), record)
    progress.finish()
    return result
