"""Train the models of a chunk in stacks, and record their margins on the targets."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch

from dmflow.core.codes import STATUS_DIVERGED, STATUS_OK
from dmflow.core.device import resolve_device
from dmflow.core.progress import Progress
from dmflow.data.augment import AugmentSettings
from dmflow.data.batches import StackedSubsetDataModule
from dmflow.training.models import VECTOR_ARCHITECTURES, build_stacked_model
from dmflow.training.module import StackedEnsembleModule
from dmflow.training.predict import StackResult, predict_stack
from dmflow.training.settings import TrainSettings
from dmflow.training.trainer import ProgressCallback, lightning_precision, make_trainer, quiet_lightning
from dmflow.training.user_module import train_user_stack

log = logging.getLogger(__name__)


def train_stack(
    data: dict[str, np.ndarray],
    subsets: np.ndarray,
    seeds: np.ndarray,
    *,
    settings: TrainSettings,
    keep_state: bool = False,
    progress: Progress | None = None,
    done_before: float = 0.0,
) -> StackResult:
    """Train K models at once with one ``Trainer.fit``: model i on ``subsets[i]`` from ``seeds[i]``.

    Parameters
    ----------
    data : dict
        The arrays of ``data.npz`` (``X_train``, ``y_train``, ``X_target``, ``y_target``, ``num_classes``).
    subsets : int [K, k]
        Training-example indices of each model (all subsets of a stack have one size k).
    seeds : int64 [K]
        Each model's seed: its init, batch order and augmentations.
    settings : TrainSettings
    keep_state : bool
        Also return the trained weights (``StackResult.state``).
    progress : Progress, optional
        Advanced in models while the stack trains (``ProgressCallback``), from ``done_before``.
    done_before : float
        The models of ``progress`` done before this stack.
    """
    quiet_lightning()
    if settings.lightning:
        return train_user_stack(data, subsets, seeds, settings=settings)
    device = resolve_device(settings.device, "train.device")
    x_train, y_train, x_target, y_target = data["X_train"], data["y_train"], data["X_target"], data["y_target"]
    num_classes = int(data["num_classes"])
    if settings.arch not in VECTOR_ARCHITECTURES and x_train.ndim == 3:
        # greyscale images [N, H, W] (digits) get their channel axis for the conv nets
        x_train, x_target = x_train[:, None], x_target[:, None]
    net = build_stacked_model(
        settings.arch,
        seeds,
        x_train.shape[1:],
        num_classes=num_classes,
        hidden=settings.hidden,
        width=settings.width,
        stacking=settings.stacking,
        device=device,
        batch_size=settings.batch_size,
        bf16=lightning_precision(settings.precision, device) == "bf16-mixed",
    ).to(torch.get_default_dtype())
    if x_train.ndim == 4:
        # channels-last: faster convolutions, and far faster CPU max-pooling (docs/images.md)
        net = net.to(memory_format=torch.channels_last)
        net.channels_last = True
    module = StackedEnsembleModule(
        net,
        optimizer=settings.optimizer,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        momentum=settings.momentum,
        label_smoothing=settings.label_smoothing,
        lr_schedule=settings.lr_schedule,
        lr_peak_epoch=settings.lr_peak_epoch,
    )
    x = torch.as_tensor(x_train, dtype=torch.get_default_dtype())
    y = torch.as_tensor(y_train, dtype=torch.long)
    augment = settings.augment if x_train.ndim == 4 else AugmentSettings()
    x_fit = x
    if lightning_precision(settings.precision, device) == "bf16-mixed" and settings.arch in VECTOR_ARCHITECTURES:
        # the first layer's matmul rounds its input to bf16 under autocast anyway: rounding
        # the features once here gives the same numbers, and halves the gather per step
        x_fit = x.to(torch.bfloat16)
    batches = StackedSubsetDataModule(
        x_fit, y, subsets, seeds=seeds, batch_size=settings.batch_size, epochs=settings.epochs, augment=augment
    )
    callbacks = [ProgressCallback(progress, before=done_before, models=len(seeds))] if progress is not None else []
    trainer = make_trainer(settings, device, callbacks)
    # Deterministic mode also fills every new tensor with NaN, a debugging aid that
    # changes no result and slows a CPU step down measurably.
    torch.utils.deterministic.fill_uninitialized_memory = False
    trainer.fit(module, datamodule=batches)
    module.eval()
    flip = settings.test_time_flip and x_train.ndim == 4
    # margins come from the float32 master weights in float32, whatever the training
    # precision: bf16 logits would round a margin of 10 by ~0.04
    margins, acc_target, acc_subset = predict_stack(
        module.net,
        x,
        y,
        x_target=x_target,
        y_target=y_target,
        subsets=subsets,
        batch_size=settings.batch_size,
        flip=flip,
    )
    state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()} if keep_state else {}
    return StackResult(margins, acc_target, acc_subset, module.finite.cpu().numpy(), state)


def plan_stacks(masks: np.ndarray, replicates: int, stack_size: int) -> list[np.ndarray]:
    """The stacks a chunk trains, in training order: each an int64 array of at most ``stack_size`` flat model
    indices (``row * replicates + replicate``). A stack needs one subset size (the same batches per epoch),
    so models are grouped by size first (fixed-size masks: one group; counterfactual masks: one per size).

    Parameters
    ----------
    masks : bool [rows, n]
    replicates : int
        Models per mask.
    stack_size : int
        K, the most models trained at once.
    """
    rows = masks.shape[0]
    sizes = masks.sum(axis=1)
    flat_rows = np.repeat(np.arange(rows), replicates)
    stacks = []
    for size in np.unique(sizes):
        group = np.flatnonzero(sizes[flat_rows] == size)
        stacks += [group[start : start + stack_size] for start in range(0, len(group), stack_size)]
    return stacks


STACK_ARRAYS = ("margins", "acc_target", "acc_subset", "finite")
"""What one trained stack contributes to its chunk: margins float32 [K, T], acc_target and acc_subset float32
[K], finite bool [K] (its loss stayed finite)."""


def train_chunk(
    data: dict[str, np.ndarray],
    masks: np.ndarray,
    seeds: np.ndarray,
    *,
    settings: TrainSettings,
    finished: Mapping[int, Mapping[str, np.ndarray]] | None = None,
    on_stack: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Train every (mask, replicate) of a chunk in the stacks of ``plan_stacks``.

    A stack's training depends on its models' subsets and seeds and the settings only, not on the stacks
    trained before it, so a stack trained by an earlier (killed) process and passed in ``finished`` gives the
    same chunk as training it again here.

    Parameters
    ----------
    data : dict
        The arrays of ``data.npz``.
    masks : bool [rows, n]
    seeds : int64 [rows, R]
        One seed per (mask, replicate).
    settings : TrainSettings
    finished : mapping, optional
        Stack number (an index into ``plan_stacks``) -> its ``STACK_ARRAYS``, for stacks trained before:
        these are not trained again.
    on_stack : callable, optional
        Called as ``on_stack(number, arrays)`` after each stack this call trains (``STACK_ARRAYS``).
    progress : Progress, optional
        Counts the models trained (rows x R in all), advanced during each stack's training.

    Returns
    -------
    dict
        The arrays of a trained chunk file (``dmflow.store.schema.CHUNK_ARRAYS``):
        margins float32 [rows, R, T], acc_target / acc_subset float32 [rows, R],
        seeds int64 [rows, R], status uint8 [rows, R].
    """
    finished = finished or {}
    rows, replicates = seeds.shape
    num_targets = data["X_target"].shape[0]
    flat_rows = np.repeat(np.arange(rows), replicates)
    flat_seeds = seeds.reshape(-1)
    out = {
        "margins": np.empty((rows * replicates, num_targets), dtype=np.float32),
        "acc_target": np.empty(rows * replicates, dtype=np.float32),
        "acc_subset": np.empty(rows * replicates, dtype=np.float32),
        "finite": np.empty(rows * replicates, dtype=bool),
    }
    stacks = plan_stacks(masks, replicates, settings.stack_size)
    done = 0
    for number, idx in enumerate(stacks):
        if number in finished:
            arrays = finished[number]
        else:
            subsets = np.stack([np.flatnonzero(masks[r]) for r in flat_rows[idx]])
            res = train_stack(data, subsets, flat_seeds[idx], settings=settings, progress=progress, done_before=done)
            arrays = dict(zip(STACK_ARRAYS, (res.margins, res.acc_target, res.acc_subset, res.finite_loss)))
            if on_stack is not None:
                on_stack(number, arrays)
        done += len(idx)
        if progress is not None:
            progress.update(done)
        for name in STACK_ARRAYS:
            out[name][idx] = arrays[name]
        log.info(
            "%s %d models (stack %d of %d)",
            "resumed" if number in finished else "trained",
            len(idx),
            number + 1,
            len(stacks),
        )
    margins = out["margins"]
    ok = out["finite"] & np.isfinite(margins).all(axis=1)
    status = np.where(ok, STATUS_OK, STATUS_DIVERGED).astype(np.uint8)
    shape = (rows, replicates)
    return {
        "margins": margins.reshape(rows, replicates, num_targets),
        "acc_target": out["acc_target"].reshape(shape),
        "acc_subset": out["acc_subset"].reshape(shape),
        "seeds": seeds,
        "status": status.reshape(shape),
    }
