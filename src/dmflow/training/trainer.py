"""How dmflow runs Lightning: one ``Trainer`` setup for every stack (precision, determinism, one process
on one device also inside a SLURM job), bf16 only where it measured faster, and progress per batch."""

from __future__ import annotations

import functools
import logging
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import LightningEnvironment

from dmflow.core import kernels as dispatch
from dmflow.core.progress import Progress
from dmflow.training.settings import TrainSettings


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


class ProgressCallback(pl.Callback):
    """Advances a ``Progress`` counted in models during one stack's ``Trainer.fit``: the ``models`` of the
    stack count as done in proportion to the batches trained, on top of the ``before`` done already."""

    def __init__(self, progress: Progress, *, before: float, models: int) -> None:
        self.progress, self.before, self.models = progress, float(before), int(models)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        batches = trainer.num_training_batches
        within = (batch_idx + 1) / batches if 0 < batches < float("inf") else 0.0
        share = min(1.0, (trainer.current_epoch + within) / max(1, trainer.max_epochs or 1))
        self.progress.update(self.before + self.models * share)


def make_trainer(settings: TrainSettings, device: str, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    """The Trainer of one stack's ``fit``: ``train.epochs`` on ``device`` in ``lightning_precision``, deterministic
    on the CPU, no logger, checkpoints, progress bar or sanity steps (dmflow saves and reports itself)."""
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
