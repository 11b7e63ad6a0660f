"""K single-model networks as one stacked network: x [K, B, ...] -> logits [K, B, classes].

Two ways, same result:

- ``grouped``: the K networks fused into one; convolutions become grouped
  convolutions (model i owns groups i), batch norms one wide batch norm (statistics
  are per channel, hence per model), linear layers batched matmuls. One kernel per
  layer for all K models.
- ``loop``: the K networks side by side in a ModuleList, called one after another
  inside the same training step. Works for any module (a user's included).

Both keep every model exactly independent: own init, own batches, own gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from dmflow.training.convnets import Mul, Residual

STACKINGS = ("auto", "grouped", "loop")
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, Mul)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)


class NotFusable(ValueError):
    """The network holds a layer that ``grouped`` stacking cannot fuse."""


class ToStacked(nn.Module):
    """[B, K*C, H, W] (grouped layout) -> [K, B, C*H*W] (one row block per model), i.e. K Flattens."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.k, -1).transpose(0, 1)


class GroupedLinear(nn.Module):
    """K linear layers on [K, B, d_in]; weight [K, d_in, d_out], optional bias [K, d_out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


def _fuse_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c = convs[0]
    k = len(convs)
    fused = nn.Conv2d(
        k * c.in_channels,
        k * c.out_channels,
        c.kernel_size,
        stride=c.stride,
        padding=c.padding,
        dilation=c.dilation,
        groups=k * c.groups,
        bias=c.bias is not None,
        padding_mode=c.padding_mode,
    ).to(c.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            fused.bias.copy_(torch.cat([m.bias for m in convs]))
    return fused


def _fuse_batchnorm(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = norms[0]
    fused = nn.BatchNorm2d(
        len(norms) * b.num_features,
        eps=b.eps,
        momentum=b.momentum,
        affine=b.affine,
        track_running_stats=b.track_running_stats,
    ).to(b.running_mean.dtype if b.running_mean is not None else b.weight.dtype)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(b, name) is not None:
                getattr(fused, name).copy_(torch.cat([getattr(m, name) for m in norms]))
    return fused


def _fuse(mods: list[nn.Module], stacked: bool) -> tuple[nn.Module, bool]:
    """Fuse K copies of one layer; ``stacked`` says whether the input is [K, B, F] yet."""
    first, k = mods[0], len(mods)
    kind = type(first)
    if any(type(m) is not kind for m in mods):
        raise NotFusable("the K networks differ in structure")
    if kind is nn.Sequential:
        layers = []
        for children in zip(*(list(m) for m in mods)):
            layer, stacked = _fuse(list(children), stacked)
            layers.append(layer)
        return nn.Sequential(*layers), stacked
    if kind is Residual:
        inner, after = _fuse([m.inner for m in mods], stacked)
        if after != stacked:
            raise NotFusable("a residual branch changes the layout")
        return Residual(inner), stacked
    if kind is nn.Conv2d and not stacked:
        return _fuse_conv(mods), stacked
    if kind is nn.BatchNorm2d and not stacked:
        return _fuse_batchnorm(mods), stacked
    if kind is nn.Flatten and not stacked and first.start_dim == 1 and first.end_dim == -1:
        return ToStacked(k), True
    if kind is nn.Linear and stacked:
        weight = torch.stack([m.weight.detach().T for m in mods]).clone()
        bias = None if first.bias is None else torch.stack([m.bias.detach() for m in mods]).clone()
        return GroupedLinear(weight, bias), stacked
    if kind in _ELEMENTWISE or (kind in _POOLS and not stacked):
        return copy.deepcopy(first), stacked
    raise NotFusable(f"{kind.__name__} {'after' if stacked else 'before'} the flatten")


class GroupedStack(nn.Module):
    """K networks fused into one (see module docstring); input [K, B, C, H, W]."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        body, stacked = _fuse(list(models), stacked=False)
        if not stacked:
            raise NotFusable("no Flatten followed by Linear at the end")
        self.body = body
        self.k = len(models)
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        return self.body(h)


class LoopStack(nn.Module):
    """K networks called one after another; input [K, B, ...]."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.k = len(models)
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 5:
            return torch.stack(
                [m(x[i].contiguous(memory_format=torch.channels_last)) for i, m in enumerate(self.models)]
            )
        return torch.stack([m(x[i]) for i, m in enumerate(self.models)])


def stack_models(models: Sequence[nn.Module], how: str = "auto", device: str = "cpu") -> GroupedStack | LoopStack:
    """Stack K single models.

    ``auto`` loops on the CPU, where grouped convolutions are slower than K ordinary
    ones (benchmarks/train_throughput.py --arch cnn), and on CUDA fuses the models when
    every layer allows it (one kernel per layer instead of K), else loops.
    """
    if how not in STACKINGS:
        raise ValueError(f"model.stacking={how!r} is not one of {STACKINGS}")
    if how == "loop" or (how == "auto" and device != "cuda"):
        return LoopStack(models)
    try:
        return GroupedStack(models)
    except NotFusable as exc:
        if how == "grouped":
            raise ValueError(
                f"model.stacking='grouped' cannot fuse this network: {exc}; use 'loop' or 'auto'"
            ) from None
        return LoopStack(models)
