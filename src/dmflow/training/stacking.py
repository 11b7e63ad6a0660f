"""K single-model networks as one stacked network: x [K, B, ...] -> logits [K, B, classes].

Three ways, same result:

- ``grouped``: the K networks fused into one; convolutions become grouped
  convolutions (model i owns groups i), batch norms one wide batch norm (statistics
  are per channel, hence per model), linear layers batched matmuls. One kernel per
  layer for all K models.
- ``loop``: the K networks side by side in a ModuleList, called one after another
  inside the same training step. Works for any module (a user's included).
- ``fused``: on the CPU, conv -> batch norm -> ReLU -> maxpool blocks of all K models in
  one numba kernel per pass (``dmflow.training.fused``), for networks of ``cnn``'s shape.

All keep every model exactly independent: own init, own batches, own gradient.
``conv_stacking`` is the one place that picks among them for ``auto``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dmflow.core import kernels as dispatch
from dmflow.training.convnets import Mul, Residual
from dmflow.training.fused import FusedConvStack, NotFusedNetwork, compile_kernels, fusable

STACKINGS = ("auto", "grouped", "loop", "fused")
PROBE_MODELS = 2
PROBE_BATCH = 32
"""The probe of ``conv_stacking``: one training step of this many models and images per model."""
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


def _probe_step(stack: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> Callable[[], None]:
    """One training step of ``stack`` on x [K, B, C, H, W], y [K, B] (forward, loss, backward)."""

    def step() -> None:
        stack.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = stack(x)
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()

    return step


def conv_stacking(
    models: Sequence[nn.Module],
    *,
    device: str,
    input_shape: Sequence[int] | None,
    batch_size: int = 100,
    bf16: bool = False,
) -> str:
    """How ``model.stacking: auto`` stacks these K models here: ``"grouped"``, ``"loop"`` or ``"fused"``.

    The one place that decides. On CUDA, ``grouped`` where every layer fuses (one kernel
    per layer instead of K), else ``loop``. On the CPU, where the network has ``cnn``'s
    shape (``dmflow.training.fused.fusable``), ``fused`` unless the dispatch point
    (``dmflow.core.kernels.choose``, kind ``"conv"``) measures ``loop`` at least ``WIN``
    times faster: one training step of ``PROBE_MODELS`` models of this network on
    ``PROBE_BATCH`` images each of ``input_shape``, in bf16 autocast where the training is
    (tens of milliseconds; a loop whose first step already takes ``LOSES`` times fused's
    is not timed again; once per process and shape class, logged); other networks
    ``loop``, as before (it measured faster than grouped convolutions on an AMX Xeon, and
    within 10 % of them on an AVX2 EPYC). On that EPYC the fused kernels trained the
    stacked ``cnn`` 4x as fast as either (benchmarks/train_throughput.py --arch cnn); where
    bf16 convolutions run on matrix units (AMX) the torch path may win, hence the
    measurement. ``model.stacking`` set to ``grouped``, ``loop`` or ``fused`` forces a
    path instead.

    Parameters
    ----------
    models : sequence of nn.Module
        The K single models (only the first is probed, in copies).
    device : str
        ``"cpu"`` or ``"cuda"``.
    input_shape : sequence of int or None
        (C, H, W) of one image; None (unknown) never fuses on the CPU.
    batch_size : int
        The training batch per model (the probe takes at most ``PROBE_BATCH`` of it).
    bf16 : bool
        Whether the training runs in bf16 autocast.

    Returns
    -------
    str
        ``"grouped"``, ``"loop"`` or ``"fused"``.
    """
    if device == "cuda":
        try:
            GroupedStack(models[:1])
        except NotFusable:
            return "loop"
        return "grouped"
    if input_shape is None:
        return "loop"
    try:
        fusable(models[0], input_shape)
    except NotFusedNetwork:
        return "loop"
    first = models[0]
    dtype = next(first.parameters()).dtype
    compile_kernels(dtype)  # compiled (or loaded from numba's cache) before the clock starts
    batch = max(1, min(int(batch_size), PROBE_BATCH))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_MODELS, batch, *input_shape, generator=gen).to(dtype)
    y = torch.randint(0, first[-1].out_features, (PROBE_MODELS, batch), generator=gen)
    copies = [copy.deepcopy(first) for _ in range(PROBE_MODELS)]
    probes = {
        "loop": _probe_step(LoopStack(copy.deepcopy(copies)), x, y, bf16),
        "fused": _probe_step(FusedConvStack(copies), x, y, bf16),
    }
    channels = tuple(m.out_channels for m in first if isinstance(m, nn.Conv2d))
    shape = (*(int(v) for v in input_shape), batch, *channels, int(bf16))
    return dispatch.choose("conv", probes, shape=shape, default="fused")


def stack_models(
    models: Sequence[nn.Module],
    how: str = "auto",
    device: str = "cpu",
    *,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 100,
    bf16: bool = False,
) -> GroupedStack | LoopStack | FusedConvStack:
    """Stack K single models (``how``: ``auto`` asks ``conv_stacking``).

    Parameters
    ----------
    models : sequence of nn.Module
        K models of one architecture, input [B, C, H, W] -> logits [B, classes].
    how : str
        One of ``STACKINGS``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    input_shape : sequence of int, optional
        (C, H, W) of one image; ``auto`` fuses on the CPU only where it is known.
    batch_size : int
        Images per model per step (``auto``'s probe).
    bf16 : bool
        Whether the training runs in bf16 autocast (``auto``'s probe).

    Returns
    -------
    GroupedStack, LoopStack or FusedConvStack
        Input [K, B, C, H, W] -> logits [K, B, classes].
    """
    if how not in STACKINGS:
        raise ValueError(f"model.stacking={how!r} is not one of {STACKINGS}")
    if how == "auto":
        how = conv_stacking(models, device=device, input_shape=input_shape, batch_size=batch_size, bf16=bf16)
    if how == "loop":
        return LoopStack(models)
    if how == "fused":
        if device != "cpu":
            raise ValueError(f"model.stacking='fused' runs on the CPU, not {device}; use 'grouped', 'loop' or 'auto'")
        try:
            for m in models:
                fusable(m, input_shape)
            return FusedConvStack(models)
        except NotFusedNetwork as exc:
            raise ValueError(
                f"model.stacking='fused' cannot compute this network: {exc}; use 'grouped', 'loop' or 'auto'"
            ) from None
    try:
        return GroupedStack(models)
    except NotFusable as exc:
        if how == "grouped":
            raise ValueError(
                f"model.stacking='grouped' cannot fuse this network: {exc}; use 'loop' or 'auto'"
            ) from None
        return LoopStack(models)
