"""Rule of ``rules/train.smk``: ``train_chunk`` trains every model of one chunk, resuming from the stacks
an earlier, killed job of the same chunk finished."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dmflow.core.codes import STATUS_OK
from dmflow.core.device import resolve_device
from dmflow.core.io import FileError, atomic_save_json, atomic_save_npz, load_npz, sha256_file
from dmflow.core.layout import alpha_dir, seconds_path, stack_path, stacks_dir
from dmflow.core.progress import Progress
from dmflow.core.provenance import provenance
from dmflow.core.seeds import chunk_seeds
from dmflow.store.masks import check_chunk_masks
from dmflow.training.settings import TrainSettings
from dmflow.training.train import STACK_ARRAYS, plan_stacks
from dmflow.training.train import train_chunk as train_models
from dmflow.training.trainer import lightning_precision

log = logging.getLogger(__name__)

STACK_FORMAT = 1
"""Version of the finished-stack files (``dmflow.core.layout.stack_path``); part of their key."""


def resume_key(data: Path, masks: Path, settings: TrainSettings, *, device: str, precision: str) -> str:
    """The key a finished stack is saved under and resumed only with: the sha256 of the data and masks files'
    bytes, the training settings, the device and precision they resolve to here, and torch's version (a stack
    trained on another device or by another torch could differ in its last bits from one trained here)."""
    ident = {
        "format": STACK_FORMAT,
        "data_sha256": sha256_file(Path(data)),
        "masks_sha256": sha256_file(Path(masks)),
        "settings": dataclasses.asdict(settings),
        "device": device,
        "precision": precision,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _stack_problem(arrays: dict[str, np.ndarray], key: str, idx: np.ndarray, seeds: np.ndarray, targets: int) -> str:
    """Why a finished-stack file's arrays cannot stand for stack ``idx`` of this chunk ('' when they can)."""
    if set(arrays) != {*STACK_ARRAYS, "key", "idx", "seeds", "seconds"}:
        return f"arrays {sorted(arrays)}, not a finished stack's"
    if str(arrays["key"]) != key:
        return "trained from other inputs (data, masks, settings, device, precision or torch version)"
    if not (np.array_equal(arrays["idx"], idx) and np.array_equal(arrays["seeds"], seeds.reshape(-1)[idx])):
        return "holds other models (another stack_size)"
    shapes = {
        "margins": (len(idx), targets),
        "acc_target": (len(idx),),
        "acc_subset": (len(idx),),
        "finite": (len(idx),),
    }
    if any(arrays[name].shape != shape for name, shape in shapes.items()):
        return "arrays of the wrong shape"
    return ""


def finished_stacks(
    out: Path, key: str, *, stacks: list[np.ndarray], seeds: np.ndarray, targets: int
) -> tuple[dict[int, dict[str, np.ndarray]], float]:
    """The stacks of chunk ``out`` that an earlier job finished and saved (``stack_path``), and their
    training seconds. A file that is unreadable (its CRC-32 fails), holds other models, or was trained
    from other inputs (``resume_key``) is named in a warning and removed, as is anything else in the folder."""
    folder = Path(stacks_dir(out))
    if not folder.is_dir():
        return {}, 0.0
    wanted = {Path(stack_path(out, number)).name: number for number in range(len(stacks))}
    found: dict[int, dict[str, np.ndarray]] = {}
    seconds = 0.0
    for path in sorted(folder.iterdir()):
        number = wanted.get(path.name)
        problem = "not a stack of this chunk" if number is None else ""
        if not problem:
            try:
                arrays = load_npz(path, rebuild="it is trained again")
            except FileError as exc:
                problem = str(exc)
            else:
                problem = _stack_problem(arrays, key, stacks[number], seeds, targets)
        if problem:
            if not path.name.startswith("."):  # a killed writer's temporary is removed silently
                log.warning("not resuming from %s: %s; removed", path, problem)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            continue
        found[number] = {name: arrays[name] for name in STACK_ARRAYS}
        seconds += float(arrays["seconds"])
    return found, seconds


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
    rows x replicates, "resumed_models": r, "provenance": ...}`` (``dmflow.core.provenance``): not in the chunk, whose bytes depend on the config alone, and
    not a rule output, so that chunks trained before it existed are not retrained.

    Every finished stack but the last is saved (``dmflow.core.layout.stack_path``) under ``resume_key``, so a
    job killed mid-chunk (a time limit, a preemption) resumes after its last finished stack: it trains the same
    stacks, and a stack's training does not depend on the stacks trained before it, so the chunk is the one
    an uninterrupted job writes, byte for byte. The saved stacks are removed once the chunk file is written; ``train_seconds`` includes
    the seconds the resumed stacks took.
    """
    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(settings.device, "train.device")
    arrays = load_npz(data)
    mask_rows = np.load(masks, allow_pickle=False)
    check_chunk_masks(
        mask_rows, Path(masks), arrays["y_train"].shape[0], alpha=alpha, split=split, chunk=chunk, seed=seed
    )
    seeds = chunk_seeds(seed, alpha, split, chunk=chunk, rows=mask_rows.shape[0], replicates=replicates)
    stacks = plan_stacks(mask_rows, replicates, settings.stack_size)
    key = resume_key(data, masks, settings, device=device, precision=lightning_precision(settings.precision, device))
    finished, resumed_seconds = finished_stacks(
        out, key, stacks=stacks, seeds=seeds, targets=arrays["X_target"].shape[0]
    )
    resumed_models = sum(len(stacks[number]) for number in finished)
    if finished:
        log.info(
            "resuming %s: %d of %d stacks (%d models) were trained before",
            out,
            len(finished),
            len(stacks),
            resumed_models,
        )

    start = last = time.perf_counter()
    progress = Progress(f"train_chunk {alpha_dir(alpha)}/{split}/{int(chunk):05d}", seeds.size, "models")

    def save(number: int, stack: dict[str, np.ndarray]) -> None:
        nonlocal last
        now = time.perf_counter()
        if number < len(stacks) - 1:  # the last stack is saved as the chunk itself
            idx = stacks[number]
            extra = {
                "key": np.array(key),
                "idx": idx,
                "seeds": seeds.reshape(-1)[idx],
                "seconds": np.float64(now - last),
            }
            atomic_save_npz(Path(stack_path(out, number)), {**stack, **extra})
        last = now

    result = train_models(
        arrays, mask_rows, seeds, settings=settings, finished=finished, on_stack=save, progress=progress
    )
    elapsed = time.perf_counter() - start + resumed_seconds
    diverged = int((result["status"] != STATUS_OK).sum())
    if diverged:
        log.warning("%d of %d models diverged in %s", diverged, result["status"].size, out)
    atomic_save_npz(Path(out), result)
    record = {
        "train_seconds": elapsed,
        "models": int(seeds.size),
        "resumed_models": int(resumed_models),
        "provenance": provenance(device=device),
    }
    atomic_save_json(Path(seconds_path(out)), record)
    if os.path.lexists(stacks_dir(out)):
        shutil.rmtree(stacks_dir(out))
    progress.finish()
    return result
