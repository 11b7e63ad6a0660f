"""K MLPs (or K logistic regressions) as batched matmuls: weights [K, d_in, d_out]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _uniform_from(param: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    """Fill ``param`` with U(-bound, bound) from a CPU generator (in place on the CPU, through a CPU copy elsewhere)."""
    if param.device.type == "cpu":
        param.uniform_(-bound, bound, generator=gen)
    else:
        param.copy_(torch.empty_like(param, device="cpu").uniform_(-bound, bound, generator=gen))


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
                for param in (self.weight[i], self.bias[i]):
                    _uniform_from(param, bound, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class StackedMLP(nn.Module):
    """K MLPs (ReLU between layers); no hidden layers makes it K logistic regressions."""

    def __init__(self, k: int, d_in: int, num_classes: int, *, hidden: Sequence[int] = ()) -> None:
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
                h = F.relu(h, inplace=True)  # baddbmm's backward does not need its output
        return h
