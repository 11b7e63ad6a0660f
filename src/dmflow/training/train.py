"""Train the models of a chunk in stacks, and record their margins on the targets."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import LightningEnvironment

from dmflow.core import kernels as dispatch
from dmflow.core.codes import STATUS_DIVERGED, STATUS_OK
from dmflow.core.device import resolve_device
from dmflow.core.progress import Progress
from dmflow.data.augment import AugmentSettings
from dmflow.data.batches import StackedSubsetDataModule, gather_rows
from dmflow.training.factory import load_lightning_class
from dmflow.training.models import VECTOR_ARCHITECTURES, build_stacked_model
from dmflow.training.module import StackedEnsembleModule, margins_from_logits
from dmflow.training.settings import TrainSettings
from dmflow.training.stacking import LoopStack
from dmflow.training.user_module import FiniteLoss, OneModelData, VmappedModules, build_seeded_modules, user_stacking

log = logging.getLogger(__name__)


@dataclass
class StackResult:
    """What one trained stack of K models reports."""

    margins: np.ndarray  # float32 [K, T]
    acc_target: np.ndarray  # float32 [K]
    acc_subset: np.ndarray  # float32 [K]
    finite_loss: np.ndarray  # bool [K]
    state: dict = field(default_factory=dict)


def quiet_lightning() -> None:
    """Silence Lightning's per-fit logging and the warnings that do not apply to stacked training."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
    warnings.filterwarnings("ignore", message=".*The `srun` command is available.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def bf16_training_pays() -> bool:
    """Whether ``train.precision: auto`` trains in bf16 on this CPU: the dispatch point's "train" kind
    (``dmflow.core.kernels.choose``), forced by ``kernels.train``, else measured once per process where the CPU
    reports bf16 units (AMX, AVX512-BF16): a stacked layer's batched matmul in bf16 against float32.

    Where the CPU has such units, bf16 trained the MLP stack several times as fast as float32
    (benchmarks/train_throughput.py, ``precision`` rows); elsewhere bf16 is converted in
    software, tens of times slower, and float32 runs unmeasured.
    """
    probes = {
        name: functools.partial(_bmm_probe, dtype)
        for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16))
    }
    return dispatch.choose("train", probes, shape=PROBE_SHAPE) == "bf16"


PROBE_SHAPE = (16, 128, 256)
"""``bf16_training_pays``' probe: K models' [batch, d_in] x [d_in, d_out], a stacked hidden layer."""


@functools.cache
def _probe_operands(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    k, b, d = PROBE_SHAPE
    return torch.ones((k, b, d), dtype=dtype), torch.ones((k, d, b), dtype=dtype)


def _bmm_probe(dtype: torch.dtype) -> torch.Tensor:
    """One probe product; its operands are made on the first call only, so a forced or cached choice
    (every stack after the first) allocates nothing."""
    return torch.bmm(*_probe_operands(dtype))


def lightning_precision(precision: str, device: str) -> str:
    """Lightning's precision flag for ``train.precision``.

    ``auto`` is bf16 mixed precision on CUDA, and on a CPU where it pays
    (``bf16_training_pays``); float32 elsewhere. A float64 default dtype (the
    equivalence tests) always trains in full precision.
    """
    if precision == "auto":
        if torch.get_default_dtype() == torch.float64:
            return "32-true"
        fast_bf16 = device == "cuda" or (device == "cpu" and bf16_training_pays())
        return "bf16-mixed" if fast_bf16 else "32-true"
    return {"32": "32-true", "bf16": "bf16-mixed"}[precision]


class _ProgressCallback(pl.Callback):
    """Advances a ``Progress`` counted in models during one stack's ``Trainer.fit``: the ``models`` of the
    stack count as done in proportion to the batches trained, on top of the ``before`` done already."""

    def __init__(self, progress: Progress, *, before: float, models: int) -> None:
        self.progress, self.before, self.models = progress, float(before), int(models)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        batches = trainer.num_training_batches
        within = (batch_idx + 1) / batches if 0 < batches < float("inf") else 0.0
        share = min(1.0, (trainer.current_epoch + within) / max(1, trainer.max_epochs or 1))
        self.progress.update(self.before + self.models * share)


def _trainer(settings: TrainSettings, device: str, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    return pl.Trainer(
        callbacks=callbacks or [],
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_epochs=settings.epochs,
        precision=lightning_precision(settings.precision, device),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=device == "cpu",
        # one process on one device, also inside a SLURM job (no SLURM auto-detection)
        plugins=[LightningEnvironment()],
    )


def _logits(net: torch.nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Stacked logits [K, B, C] (half precision raised to float32); averaged with the mirrored images when ``flip``."""
    out = net(x)
    if flip:
        out = (out + net(x.flip(-1))) / 2
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


def predict_stack(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_target: np.ndarray,
    y_target: np.ndarray,
    subsets: np.ndarray,
    batch_size: int,
    flip: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Margins float32 [K, T] and accuracy on the targets [K] and on each model's own subset [K].

    ``x`` [N, ...] and ``y`` [N] are the training set, ``subsets`` int [K, k] each
    model's training examples. Evaluated in slices of ``batch_size`` examples, so K x T
    images never sit in memory at once.
    """
    dev = next(net.parameters()).device
    k_models = subsets.shape[0]
    xt = torch.as_tensor(x_target, dtype=x.dtype, device=dev)
    yt = torch.as_tensor(y_target, dtype=torch.long, device=dev)
    margins, hits_t, hits_s = [], [], []
    step = max(1, int(batch_size))
    with torch.no_grad():
        for start in range(0, len(xt), step):
            xb, yb = xt[start : start + step], yt[start : start + step]
            logits = _logits(net, xb.unsqueeze(0).expand(k_models, *xb.shape), flip)
            margins.append(margins_from_logits(logits, yb))
            hits_t.append((logits.argmax(-1) == yb).float().sum(1))
        xd, yd = x.to(dev), y.to(dev)
        idx_all = torch.as_tensor(subsets, device=dev)
        for start in range(0, subsets.shape[1], step):
            idx = idx_all[:, start : start + step]
            hits_s.append((_logits(net, gather_rows(xd, idx), flip).argmax(-1) == yd[idx]).float().sum(1))
    margins_np = torch.cat(margins, dim=1).float().cpu().numpy()
    acc_target = (torch.stack(hits_t).sum(0) / len(xt)).cpu().numpy()
    acc_subset = (torch.stack(hits_s).sum(0) / subsets.shape[1]).cpu().numpy()
    return margins_np, acc_target, acc_subset


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
        Advanced in models while the stack trains (``_ProgressCallback``), from ``done_before``.
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
    callbacks = [_ProgressCallback(progress, before=done_before, models=len(seeds))] if progress is not None else []
    trainer = _trainer(settings, device, callbacks)
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


def train_user_stack(
    data: dict[str, np.ndarray],
    subsets: np.ndarray,
    seeds: np.ndarray,
    *,
    settings: TrainSettings,
) -> StackResult:
    """``train_stack`` for a user's LightningModule (``settings.lightning``, ``dmflow.training.user_module``).

    Model i is built and trained with the global torch seed ``seeds[i]`` on ``subsets[i]``,
    in its own batch order and augmentations: all K in one ``Trainer.fit`` where
    ``user_stacking`` finds them stackable, else one ``Trainer.fit`` each (one log line
    says which and why). Margins and accuracies come from each module's ``forward`` in eval
    mode through ``predict_stack``, as for dmflow's own models.

    Parameters
    ----------
    data : dict
        The arrays of ``data.npz``.
    subsets : int [K, k]
        Training-example indices of each model.
    seeds : int64 [K]
        Each model's seed.
    settings : TrainSettings
    """
    device = resolve_device(settings.device, "train.device")
    x_train, y_train, x_target, y_target = data["X_train"], data["y_train"], data["X_target"], data["y_target"]
    if x_train.ndim == 3:  # greyscale images [N, H, W] get their channel axis, as for the conv nets
        x_train, x_target = x_train[:, None], x_target[:, None]
    cls = load_lightning_class(settings.lightning)
    modules = build_seeded_modules(
        cls, seeds, x_train.shape[1:], num_classes=int(data["num_classes"]), args=dict(settings.lightning_args)
    )
    modules = [m.to(torch.get_default_dtype()) for m in modules]
    x = torch.as_tensor(x_train, dtype=torch.get_default_dtype())
    y = torch.as_tensor(y_train, dtype=torch.long)
    augment = settings.augment if x_train.ndim == 4 else AugmentSettings()
    batching = {"batch_size": settings.batch_size, "epochs": settings.epochs, "augment": augment}
    first = torch.as_tensor(subsets[:, : settings.batch_size])
    how, why = user_stacking(modules, settings.stacking, probe=(gather_rows(x, first), y[first]))
    log.info(
        "%s: %d models %s: %s", settings.lightning, len(modules), "stacked" if how == "vmap" else "one by one", why
    )
    torch.utils.deterministic.fill_uninitialized_memory = False
    if how == "vmap":
        stack = VmappedModules(modules)
        _trainer(settings, device).fit(
            stack, datamodule=StackedSubsetDataModule(x, y, subsets, seeds=seeds, **batching)
        )
        stack.unstack(modules)
        finite = stack.finite.cpu().numpy()
    else:
        finite = np.ones(len(modules), dtype=bool)
        for i, module in enumerate(modules):
            batches = OneModelData(x, y, subsets[i : i + 1], seeds=seeds[i : i + 1], **batching)
            check = FiniteLoss()
            trainer = _trainer(settings, device, callbacks=[check])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seeds[i]))
                trainer.fit(module, datamodule=batches)
            finite[i] = check.finite
    net = LoopStack([m.eval() for m in modules]).to(device)
    margins, acc_target, acc_subset = predict_stack(
        net,
        x,
        y,
        x_target=x_target,
        y_target=y_target,
        subsets=subsets,
        batch_size=settings.batch_size,
        flip=settings.test_time_flip and x_train.ndim == 4,
    )
    return StackResult(margins, acc_target, acc_subset, finite)


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
