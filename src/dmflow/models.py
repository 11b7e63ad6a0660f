"""The stacked K-model ensemble: K independent networks trained as one LightningModule.

Each of the K models has its own weights (stacked along a leading axis), its own
initialisation and its own minibatches; the loss is the sum of the K per-model
mean losses, so each model's gradient is exactly its own, and Adam/SGD (being
elementwise) update every model exactly as if it were trained alone. One
``Trainer.fit`` then trains K models, which removes Lightning's per-fit overhead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURES = ("logreg", "mlp")


class StackedLinear(nn.Module):
    """K independent affine maps: x [K, B, d_in] -> [K, B, d_out]."""

    def __init__(self, k: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(k, d_out))

    def reset_parameters(self, generators: Sequence[torch.Generator]) -> None:
        """nn.Linear's default init, U(-1/sqrt(d_in), 1/sqrt(d_in)), drawn per model."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        with torch.no_grad():
            for i, gen in enumerate(generators):
                self.weight[i].copy_(torch.empty_like(self.weight[i], device="cpu").uniform_(-bound, bound, generator=gen))
                self.bias[i].copy_(torch.empty_like(self.bias[i], device="cpu").uniform_(-bound, bound, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class StackedMLP(nn.Module):
    """K MLPs (ReLU between layers); no hidden layers makes it K logistic regressions."""

    def __init__(self, k: int, d_in: int, num_classes: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        widths = [d_in, *hidden, num_classes]
        self.layers = nn.ModuleList(StackedLinear(k, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.k = k

    def reset_parameters(self, seeds: Sequence[int]) -> None:
        """Initialise model i from ``seeds[i]`` alone (layer by layer, weight then bias)."""
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        for layer in self.layers:
            layer.reset_parameters(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [K, B, ...] -> logits [K, B, classes]; features are flattened."""
        h = x.flatten(2)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h


def build_stacked_model(arch: str, k: int, d_in: int, num_classes: int, hidden: Sequence[int]) -> StackedMLP:
    """The stacked network for a config's ``model.arch``."""
    if arch == "logreg":
        return StackedMLP(k, d_in, num_classes, ())
    if arch == "mlp":
        return StackedMLP(k, d_in, num_classes, tuple(hidden))
    raise ValueError(f"model.arch={arch!r} is not one of {ARCHITECTURES}")


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """margin = logit[y] - max_{c != y} logit[c]; logits [..., C], labels broadcastable to [...]."""
    labels = labels.expand(logits.shape[:-1])
    correct = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return correct - others.amax(-1)


class StackedEnsembleModule(pl.LightningModule):
    """LightningModule training a StackedMLP; a batch is (x [K, B, ...], y [K, B])."""

    def __init__(
        self,
        net: StackedMLP,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.register_buffer("finite", torch.ones(net.k, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        per_model = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)
        self.finite &= torch.isfinite(per_model.detach())
        return per_model.sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(
                self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        raise ValueError(f"train.optimizer={self.optimizer_name!r} is not one of ('adam', 'sgd')")
