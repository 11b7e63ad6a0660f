"""The LightningModule that trains a stacked network, and the margin of DESIGN."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """margin = logit[y] - max_{c != y} logit[c]; logits [..., C], labels broadcastable to [...]."""
    labels = labels.expand(logits.shape[:-1])
    correct = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return correct - others.amax(-1)


class StackedEnsembleModule(pl.LightningModule):
    """LightningModule training a stacked network; a batch is (x [K, B, ...], y [K, B]).

    The loss is the sum over models of each model's mean (label-smoothed) cross
    entropy, so each model's gradient is its own, and Adam/SGD (elementwise) update
    every model exactly as if it were trained alone. The learning rate is constant or
    triangular (0 -> lr at ``lr_peak_epoch`` -> 0 at the last epoch, per step, as in
    the paper's CIFAR-10 recipe). ``finite`` [K] records whether each model's loss
    stayed finite.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        optimizer: str,
        lr: float,
        weight_decay: float,
        momentum: float,
        label_smoothing: float,
        lr_schedule: str,
        lr_peak_epoch: float,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.label_smoothing = label_smoothing
        self.lr_schedule = lr_schedule
        self.lr_peak_epoch = lr_peak_epoch
        self.register_buffer("finite", torch.ones(net.k, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()
        per_model = F.cross_entropy(
            logits.transpose(1, 2), y, reduction="none", label_smoothing=self.label_smoothing
        ).mean(dim=1)
        self.finite &= torch.isfinite(per_model.detach())
        return per_model.sum()

    def _optimizer(self) -> torch.optim.Optimizer:
        # fused kernels: one pass per parameter tensor instead of several (same update rule)
        fused = {"fused": True} if self._fusable() else {}
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay, **fused)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(
                self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, **fused
            )
        raise ValueError(f"train.optimizer={self.optimizer_name!r} is not one of ('adam', 'sgd')")

    def _fusable(self) -> bool:
        params = list(self.parameters())
        return all(p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda") for p in params)

    def configure_optimizers(self):
        optimizer = self._optimizer()
        if self.lr_schedule == "constant":
            return optimizer
        if self.lr_schedule != "triangular":
            raise ValueError(f"train.lr_schedule={self.lr_schedule!r} is not one of ('constant', 'triangular')")
        epochs = self.trainer.max_epochs
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // epochs)
        knots = [0.0, self.lr_peak_epoch * steps_per_epoch, epochs * steps_per_epoch]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: float(np.interp(step, knots, [0.0, 1.0, 0.0]))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
