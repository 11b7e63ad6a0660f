"""``fused`` stacking of K conv nets on the CPU: every conv -> batch norm -> ReLU -> maxpool block
of all K models in one numba kernel per pass (``dmflow.training.conv_kernels``).

For the networks ``fusable`` accepts (``cnn``'s shape: blocks of Conv2d 3x3 / stride 1 /
padding 1 without bias, BatchNorm2d, ReLU, MaxPool2d(2), then a global average pool,
Flatten and Linear). Each model keeps its own weights, batch statistics, running
statistics and gradients, exactly as if trained alone (``tests/test_stacked_training.py``
checks outputs, gradients, running statistics and whole trainings against the
one-model-at-a-time networks).

Why it is faster there than grouped convolutions: a CPU step of the stacked ``cnn`` is
bound by memory traffic, not arithmetic: the first block's full-resolution output is
K * B * 8 * 28 * 28 floats (125 MB per step at K = 50, B = 100), and batch norm, ReLU,
pooling and their backward passes each read and write it again. The fused kernels keep
that output in registers, one pooling window at a time, and write a quarter of it once
(``conv_kernels``' docstring says why that is exact); the backward pass recomputes it
instead of reading it back. What is left is arithmetic in explicit SIMD vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from dmflow.training import conv_kernels as ck

LANES = 8


class NotFusedNetwork(ValueError):
    """The network is not one the fused kernels compute (the message says which layer)."""


def _pad8(n: int) -> int:
    return LANES * math.ceil(n / LANES)


def _check_block(conv: nn.Module, norm: nn.Module, relu: nn.Module, pool: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d) or type(conv) is not nn.Conv2d:
        raise NotFusedNetwork(f"{type(conv).__name__} where a Conv2d starts a block")
    shape = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
    if shape != ((3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros") or conv.bias is not None:
        raise NotFusedNetwork("a Conv2d other than 3x3, stride 1, padding 1, no bias")
    if type(norm) is not nn.BatchNorm2d or not norm.affine or not norm.track_running_stats:
        raise NotFusedNetwork(f"{type(norm).__name__} after a Conv2d, not an affine BatchNorm2d with running stats")
    if type(relu) is not nn.ReLU:
        raise NotFusedNetwork(f"{type(relu).__name__} after a BatchNorm2d, not ReLU")
    pool_shape = (pool.kernel_size, pool.stride, pool.padding, pool.dilation) if type(pool) is nn.MaxPool2d else ()
    if pool_shape not in ((2, 2, 0, 1), ((2, 2), (2, 2), 0, 1)) or pool.ceil_mode or pool.return_indices:
        raise NotFusedNetwork(f"{type(pool).__name__} after a ReLU, not MaxPool2d(2)")


def fusable(model: nn.Module, input_shape: Sequence[int] | None = None) -> None:
    """Raise ``NotFusedNetwork`` unless ``fused`` stacking computes ``model`` (on ``input_shape``).

    Parameters
    ----------
    model : nn.Module
        One model of the stack: an ``nn.Sequential`` of blocks [Conv2d 3x3 (stride 1,
        padding 1, no bias), BatchNorm2d, ReLU, MaxPool2d(2)], then AdaptiveAvgPool2d(1),
        Flatten and Linear.
    input_shape : sequence of int, optional
        (C, H, W) of one image: every block's input must have an even height and width
        (the pooling windows tile it).
    """
    if type(model) is not nn.Sequential:
        raise NotFusedNetwork(f"{type(model).__name__}, not an nn.Sequential")
    layers = list(model)
    if len(layers) < 7 or (len(layers) - 3) % 4:
        raise NotFusedNetwork("not a sequence of conv-BN-ReLU-maxpool blocks and a pooled linear head")
    for i in range(0, len(layers) - 3, 4):
        _check_block(*layers[i : i + 4])
    pool, flat, head = layers[-3:]
    if type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1)):
        raise NotFusedNetwork(f"{type(pool).__name__} after the last block, not AdaptiveAvgPool2d(1)")
    if type(flat) is not nn.Flatten or (flat.start_dim, flat.end_dim) != (1, -1) or type(head) is not nn.Linear:
        raise NotFusedNetwork("the head is not Flatten then Linear")
    if input_shape is not None:
        h, w = int(input_shape[-2]), int(input_shape[-1])
        if int(input_shape[0]) != layers[0].in_channels:
            raise NotFusedNetwork(f"{input_shape[0]} input channels for a Conv2d of {layers[0].in_channels}")
        for _ in range(0, len(layers) - 3, 4):
            if h % 2 or w % 2 or h == 0:
                raise NotFusedNetwork(f"a {h}x{w} input to a block (the 2x2 pooling windows need even sizes)")
            h, w = h // 2, w // 2


def threads() -> int:
    """Threads the kernels run on: torch's count (the job's ``threads``)."""
    return max(1, torch.get_num_threads())


_pools: dict[int, ThreadPoolExecutor] = {}


def _run(kernel, items: int, *args) -> None:
    """kernel(lo, hi, *args) over items 0..items-1, in contiguous ranges side by side on ``threads()`` threads.

    The kernels release the interpreter lock, so plain threads run them in parallel; they
    wait on a queue between calls, not spinning, which matters where other processes
    share the cores.
    """
    n = threads()
    if n == 1 or items < 2:
        kernel(0, items, *args)
        return
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="dmflow-fused")
    pieces = min(items, 4 * n)  # a few ranges per thread: a slower core takes fewer
    bounds = [items * i // pieces for i in range(pieces + 1)]
    list(_pools[n].map(lambda lo_hi: kernel(lo_hi[0], lo_hi[1], *args), zip(bounds[:-1], bounds[1:])))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


class _Trunk(torch.autograd.Function):
    """The K models' conv blocks and global average pool: x [K, B, C, H, W] -> features [K, B, O8].

    The glue between the kernels (batch-norm statistics, coefficients, layouts) is numpy on
    [K, O8]-sized arrays: torch would run some of it on its thread pool, whose barriers cost
    milliseconds where other processes share the cores.
    """

    @staticmethod
    def forward(ctx, net: FusedConvStack, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        dtype = params[0].detach().numpy().dtype
        k, batch, cin, h, w = x.shape
        src = np.empty((k, batch, h + 2, w + 2, cin), dtype=dtype)
        _run(ck.pad_input, k * batch, _np(x.to(params[0].dtype)), src)
        none = np.empty((k, 0), dtype=dtype)
        prev = (none, none, none)
        blocks = []
        cin_pad = cin
        for i, block in enumerate(net.blocks):
            weight, gamma, beta = (_np(p) for p in params[3 * i : 3 * i + 3])
            weight = weight.reshape(k, weight.shape[1], -1, 3, 3)
            o, o8 = weight.shape[1], _pad8(weight.shape[1])
            wk = np.zeros((k, 3, 3, cin_pad, o8), dtype=dtype)
            wk[:, :, :, : weight.shape[2], :o] = weight.transpose(0, 3, 4, 2, 1)
            wk = wk.reshape(k, 9, cin_pad, o8)
            gamma8, beta8 = _padded(gamma, o8), _padded(beta, o8)
            mean_run, var_run = (_padded(_np(getattr(net, f"{n}{i}")), o8) for n in ("running_mean", "running_var"))
            up = (gamma8 >= 0).astype(dtype)
            shift = mean_run.astype(dtype)
            h, w = h // 2, w // 2
            psel = np.empty((k, batch, h, w, o8), dtype=dtype)
            psum, psq = np.empty((k, batch, o8), dtype=dtype), np.empty((k, batch, o8), dtype=dtype)
            _run(ck.block_forward, k * batch, src, prev[0], prev[1], wk, up, shift, psel, psum, psq)
            count = batch * h * w * 4
            if net.training:
                s1 = psum.sum(axis=1, dtype=np.float64) / count
                mean = shift + s1
                var = np.maximum(psq.sum(axis=1, dtype=np.float64) / count - s1 * s1, 0.0)
                _update_running(net, i, block, mean[:, :o], var[:, :o] * count / max(count - 1, 1))
            else:
                mean, var = mean_run, var_run
            invstd = 1.0 / np.sqrt(var + block["eps"])
            scale = gamma8 * invstd
            out_scale, out_bias = scale.astype(dtype), (beta8 - mean * scale).astype(dtype)
            blocks.append(
                {
                    "src": src,
                    "prev": prev,
                    "wk": wk,
                    "up": up,
                    "psel": psel,
                    "scale": out_scale,
                    "bias": out_bias,
                    "mean": mean,
                    "invstd": invstd,
                    "gamma": gamma8,
                    "count": count,
                    "cin": weight.shape[2],
                    "o": o,
                }
            )
            src, prev, cin_pad = psel, (out_scale, out_bias, mean.astype(dtype)), o8
        feat = np.empty((k, batch, cin_pad), dtype=dtype)
        _run(ck.head_features, k * batch, src, prev[0], prev[1], feat)
        ctx.blocks = blocks
        ctx.training = net.training
        return torch.from_numpy(feat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        blocks, grads = ctx.blocks, []
        last = blocks[-1]
        dtype = last["psel"].dtype
        k, batch, hq, wq, o8 = last["psel"].shape
        g = np.ascontiguousarray(_np(grad), dtype=dtype).reshape(k, batch, 1, 1, o8)
        gsum, gxsum = np.empty((k, batch, o8), dtype=dtype), np.empty((k, batch, o8), dtype=dtype)
        mean = last["mean"].astype(dtype)
        _run(ck.head_grad_sums, k * batch, g, last["psel"], last["scale"], last["bias"], mean, gsum, gxsum)
        head = 1.0 / (hq * wq)
        for i in range(len(blocks) - 1, -1, -1):
            s = blocks[i]
            src, wk = s["src"], s["wk"]
            cin_pad, o8 = wk.shape[2], wk.shape[3]
            invstd, gamma, count = s["invstd"], s["gamma"], s["count"]
            dbeta = gsum.sum(axis=1, dtype=np.float64)
            dgamma = gxsum.sum(axis=1, dtype=np.float64) * invstd  # the sum of g * xhat
            if ctx.training:
                m1, m2 = gamma * dbeta / count, gamma * dgamma / count
                c1 = -invstd * invstd * m2
                c0 = -invstd * m1 - c1 * s["mean"]
            else:
                c1 = c0 = np.zeros_like(invstd)
            coef = np.stack([gamma * invstd, c1, c0]).astype(dtype)
            if i > 0:
                wt = np.ascontiguousarray(wk[:, ::-1].transpose(0, 1, 3, 2))
                gprev = np.empty(src.shape, dtype=dtype)
                gsum, gxsum = np.empty((k, batch, cin_pad), dtype=dtype), np.empty((k, batch, cin_pad), dtype=dtype)
            else:
                wt, gprev = np.empty((0, 1, 1, 1), dtype=dtype), np.empty((0, 1, 1, 1, 1), dtype=dtype)
                gsum = gxsum = np.empty((0, 1, 1), dtype=dtype)
            chunks = max(1, min(batch, math.ceil(4 * threads() / k)))
            dw = np.empty((k * chunks, 9 * cin_pad * o8), dtype=dtype)
            prev_scale, prev_bias, prev_mean = s["prev"]
            args = (src, prev_scale, prev_bias, prev_mean, wk, wt, s["up"], s["psel"], s["scale"], s["bias"], coef, g)
            _run(ck.block_backward, k * chunks, chunks, *args, head, dw, gprev, gsum, gxsum)
            dweight = dw.reshape(k, chunks, 3, 3, cin_pad, o8).sum(axis=1)[:, :, :, : s["cin"], : s["o"]]
            grads[:0] = [
                torch.from_numpy(np.ascontiguousarray(dweight.transpose(0, 4, 3, 1, 2)).reshape(k, s["o"], -1)),
                torch.from_numpy(dgamma[:, : s["o"]].astype(dtype)),
                torch.from_numpy(dbeta[:, : s["o"]].astype(dtype)),
            ]
            g, head = gprev, 0.0
        return (None, None, *grads)


def _padded(a: np.ndarray, width: int) -> np.ndarray:
    """[K, n] -> [K, width] float64, zeros after column n."""
    out = np.zeros((a.shape[0], width))
    out[:, : a.shape[1]] = a
    return out


def _update_running(net: FusedConvStack, i: int, block: dict, mean: np.ndarray, var_unbiased: np.ndarray) -> None:
    """nn.BatchNorm2d's update of the running statistics, per model."""
    tracked = getattr(net, f"num_batches_tracked{i}")
    tracked.add_(1)
    momentum = block["momentum"]
    factor = 1.0 / float(tracked) if momentum is None else momentum
    for name, value in ((f"running_mean{i}", mean), (f"running_var{i}", var_unbiased)):
        buf = getattr(net, name)
        buf.mul_(1 - factor).add_(torch.from_numpy(value).to(buf.dtype), alpha=factor)


class FusedConvStack(nn.Module):
    """K conv nets of ``fusable`` shape, trained together by the fused kernels; input [K, B, C, H, W].

    Parameters per block i: ``conv{i}`` [K, O, C * 9] (each model's Conv2d weight [O, C, 3, 3],
    flattened: 3-D, so that a module-wide channels-last conversion leaves it alone), ``bn_weight{i}``, ``bn_bias{i}``
    [K, O]; buffers ``running_mean{i}``, ``running_var{i}`` [K, O], ``num_batches_tracked{i}``;
    the head ``weight`` [K, O, classes] and ``bias`` [K, classes]. CPU tensors of float32 or
    float64.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        for m in models:
            fusable(m)
        layers = [list(m) for m in models]
        first = layers[0]
        self.k = len(models)
        self.channels_last = False  # set by the trainer; the kernels choose their own layout
        self.blocks = []
        for b, i in enumerate(range(0, len(first) - 3, 4)):
            convs, norms = [m[i] for m in layers], [m[i + 1] for m in layers]
            if any(c.weight.shape != convs[0].weight.shape for c in convs):
                raise NotFusedNetwork("the K networks differ in structure")
            norm = norms[0]
            self.blocks.append({"eps": norm.eps, "momentum": norm.momentum})
            weights = torch.stack([c.weight.detach().flatten(1) for c in convs]).clone()
            self.register_parameter(f"conv{b}", nn.Parameter(weights))
            self.register_parameter(
                f"bn_weight{b}", nn.Parameter(torch.stack([n.weight.detach() for n in norms]).clone())
            )
            self.register_parameter(f"bn_bias{b}", nn.Parameter(torch.stack([n.bias.detach() for n in norms]).clone()))
            self.register_buffer(f"running_mean{b}", torch.stack([n.running_mean for n in norms]).clone())
            self.register_buffer(f"running_var{b}", torch.stack([n.running_var for n in norms]).clone())
            self.register_buffer(f"num_batches_tracked{b}", norm.num_batches_tracked.clone())
        heads = [m[-1] for m in layers]
        self.weight = nn.Parameter(torch.stack([h.weight.detach().T for h in heads]).clone())
        self.bias = (
            None if heads[0].bias is None else nn.Parameter(torch.stack([h.bias.detach() for h in heads]).clone())
        )

    def trunk_params(self) -> list[torch.Tensor]:
        return [
            getattr(self, f"{name}{b}") for b in range(len(self.blocks)) for name in ("conv", "bn_weight", "bn_bias")
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = _Trunk.apply(self, x, *self.trunk_params())[..., : self.weight.shape[1]]
        if self.bias is None:
            return torch.bmm(features, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), features, self.weight)


_compiled: set[torch.dtype] = set()


def compile_kernels(dtype: torch.dtype = torch.float32) -> None:
    """Compile (or load from numba's on-disk cache) the kernels for ``dtype``, once per process.

    One tiny training step and an evaluation on a broadcast input (the margins pass feeds
    one, a second layout of the input kernel); the global random state is left as it was.
    """
    if dtype in _compiled:
        return
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 2),
        )
    net = FusedConvStack([model, model]).to(dtype)
    net(torch.zeros(2, 2, 1, 4, 4, dtype=dtype)).sum().backward()
    with torch.no_grad():
        net.eval()(torch.zeros(2, 1, 4, 4, dtype=dtype).unsqueeze(0).expand(2, 2, 1, 4, 4))
    _compiled.add(dtype)
