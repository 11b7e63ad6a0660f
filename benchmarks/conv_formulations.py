"""One training step of K stacked conv nets, every formulation side by side in one run.

The formulations of the stacked ``cnn`` step (forward, the sum of the K models' mean
cross entropies, backward; no optimizer), on K models of ``--width`` with random
images of ``--image-shape`` and ``--batch`` images per model:

- ``grouped``, ``grouped-cl``: ``model.stacking: grouped`` (grouped convolutions), NCHW
  and channels-last memory format (what training uses);
- ``loop``, ``loop-cl``: the K models one after another in the step;
- ``tiles-5``, ``tiles-10``: grouped channels-last stacks of 5 or 10 models called one
  after another (smaller tiles of the stack, for the cache);
- ``im2col``: each convolution as ``F.unfold`` and one ``torch.bmm`` over the K models,
  batch norm as per-model statistics over the rows, max-pooling channels-last;
- ``vmap``: ``torch.func.vmap`` over ``functional_call`` of one model with the K
  models' stacked weights (batch norm without running statistics: vmap cannot update
  them in place; the arithmetic is the same);
- ``fused``: ``model.stacking: fused`` (``dmflow.training.fused``).

A round times one step of each, in a rotating order; the script prints each one's best
time, its useful GFLOP/s (forward, weight and input gradients of every convolution but
the first layer's input gradient) and the median over rounds of each round's ratio to
``grouped-cl``. First, every formulation's loss and gradients are checked against the
loop in float64 on a small stack (all compute the same function).

Run:  python benchmarks/conv_formulations.py [--threads 2] [--stack-size 50] [--record]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dmflow.training.convnets import build_seeded
from dmflow.training.fused import compile_kernels
from dmflow.training.stacking import stack_models

import record

SECTION = "conv_formulations.py"
FORMULATIONS = ("grouped", "grouped-cl", "loop", "loop-cl", "tiles-5", "tiles-10", "im2col", "vmap", "fused")
HEADER = (
    "width",
    "image",
    "threads",
    "K",
    "batch",
    "rounds",
    "1-min load",
    "grouped-cl ms",
    *(f"{name} x" for name in FORMULATIONS if name != "grouped-cl"),
    "fused GFLOP/s",
    "grouped-cl GFLOP/s",
)
NOTES = """\
One training step (forward, loss, backward) of K stacked `cnn` models in each formulation, side by side in one
run (`python benchmarks/conv_formulations.py`; see its docstring). **width**, **image** (C x H x W), **threads**,
**K**, **batch** (images per model), **rounds**, **1-min load** (at start / at the end); **grouped-cl ms**: the best
step time of grouped convolutions in channels-last format (the training path of `model.stacking: grouped`); each
**x** column: the median over rounds of a formulation's speed relative to it (grouped-cl time / its time; > 1 is
faster); **GFLOP/s**: useful FLOPs of the step per second at the best time."""


class Im2colStack(nn.Module):
    """K cnn models, each convolution as unfold + one bmm over the K models (rows: image x position)."""

    def __init__(self, models: list[nn.Sequential]) -> None:
        super().__init__()
        self.k = len(models)
        self.convs = nn.ParameterList()
        self.gammas, self.betas = nn.ParameterList(), nn.ParameterList()
        for i in range(0, len(models[0]) - 3, 4):
            weights = [m[i].weight.detach().flatten(1).T for m in models]  # [C*9, O]
            self.convs.append(nn.Parameter(torch.stack(weights).clone()))
            self.gammas.append(nn.Parameter(torch.stack([m[i + 1].weight.detach() for m in models]).clone()))
            self.betas.append(nn.Parameter(torch.stack([m[i + 1].bias.detach() for m in models]).clone()))
        self.eps = models[0][1].eps
        self.head = nn.Parameter(torch.stack([m[-1].weight.detach().T for m in models]).clone())
        self.bias = nn.Parameter(torch.stack([m[-1].bias.detach() for m in models]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        h = x.reshape(k * b, *x.shape[2:])  # [K*B, C, H, W]
        for weight, gamma, beta in zip(self.convs, self.gammas, self.betas, strict=True):
            height, width = h.shape[-2:]
            cols = F.unfold(h, 3, padding=1)  # [K*B, C*9, H*W]
            cols = cols.view(k, b, cols.shape[1], -1).transpose(2, 3).reshape(k, -1, cols.shape[1])
            y = torch.bmm(cols, weight)  # [K, B*H*W, O]
            var, mean = torch.var_mean(y, dim=1, keepdim=True, unbiased=False)
            y = torch.relu((y - mean) * torch.rsqrt(var + self.eps) * gamma.unsqueeze(1) + beta.unsqueeze(1))
            nhwc = y.view(k * b, height, width, -1)
            h = F.max_pool2d(nhwc.permute(0, 3, 1, 2), 2)  # channels-last strides
        features = h.mean((2, 3)).view(k, b, -1)
        return torch.baddbmm(self.bias.unsqueeze(1), features, self.head)


class TiledStack(nn.Module):
    """Grouped channels-last stacks of ``tile`` models, called one after another."""

    def __init__(self, models: list[nn.Module], tile: int) -> None:
        super().__init__()
        self.stacks = nn.ModuleList(
            stack_models(models[i : i + tile], "grouped").to(memory_format=torch.channels_last)
            for i in range(0, len(models), tile)
        )
        for s in self.stacks:
            s.channels_last = True
        self.tile = tile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([s(x[i * self.tile : (i + 1) * self.tile]) for i, s in enumerate(self.stacks)])


class VmapStack(nn.Module):
    """torch.func.vmap of functional_call over the K models' stacked weights (BN without running stats)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        models = [copy.deepcopy(m) for m in models]
        for m in models:
            for layer in m.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.track_running_stats = False
                    layer.running_mean = layer.running_var = layer.num_batches_tracked = None
        params, buffers = torch.func.stack_module_state(models)
        self.params = nn.ParameterDict({n.replace(".", "_"): nn.Parameter(p) for n, p in params.items()})
        self.names = list(params)
        self.buffers_ = buffers
        self.base = copy.deepcopy(models[0]).to("meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {n: self.params[n.replace(".", "_")] for n in self.names}

        def one(p, b, xi):
            return torch.func.functional_call(self.base, (p, b), (xi,))

        return torch.func.vmap(one)(params, self.buffers_, x)


def build(name: str, models: list[nn.Module], shape: tuple[int, ...]) -> nn.Module:
    models = [copy.deepcopy(m) for m in models]
    if name in ("grouped", "grouped-cl", "loop", "loop-cl"):
        net = stack_models(models, name.removesuffix("-cl"))
        if name.endswith("-cl"):
            net = net.to(memory_format=torch.channels_last)
            net.channels_last = True
        return net
    if name.startswith("tiles-"):
        return TiledStack(models, int(name.split("-")[1]))
    if name == "im2col":
        return Im2colStack(models)
    if name == "vmap":
        return VmapStack(models)
    return stack_models(models, "fused", input_shape=shape)


def step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    def run() -> list[torch.Tensor]:
        net.zero_grad(set_to_none=True)
        logits = net(x)
        F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
        return [p.grad for p in net.parameters()]

    return run


def check(width: float, shape: tuple[int, ...]) -> dict[str, tuple[float, float]]:
    """Each formulation's logits and the norm of its whole gradient, against the loop's, in float64.

    The parameters' layouts differ between formulations; the sum of every parameter
    gradient's squares does not (the same parameters, the same gradient).
    """
    torch.manual_seed(0)
    models = [m.double() for m in build_seeded("cnn", shape, 10, seeds=range(3), width=width)]
    x = torch.randn(3, 4, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (3, 4))

    def run(name: str) -> tuple[torch.Tensor, float]:
        net = build(name, models, shape).double()
        logits = net(x)
        F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum().backward()
        return logits.detach(), float(sum((p.grad**2).sum() for p in net.parameters() if p.grad is not None))

    ref_logits, ref_norm = run("loop")
    out = {}
    for name in FORMULATIONS:
        logits, norm = run(name)
        out[name] = (float((logits - ref_logits).abs().max()), abs(norm - ref_norm) / ref_norm)
    return out


def useful_flops(width: float, shape: tuple[int, ...], k: int, batch: int) -> float:
    """Forward, weight and input gradients of every convolution (not the first one's input gradient), one step."""
    model = build_seeded("cnn", shape, 10, seeds=[0], width=width)[0]
    h, w, total, first = shape[1], shape[2], 0.0, True
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            fwd = 2.0 * h * w * layer.in_channels * layer.out_channels * 9
            total += fwd * (2 if first else 3)
            first = False
        elif isinstance(layer, nn.MaxPool2d):
            h, w = h // 2, w // 2
    return total * k * batch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stack-size", type=int, default=50)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--image-shape", default="1,28,28")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes: only checks that the script runs")
    record.add_arguments(p)
    args = p.parse_args(argv)
    args.results_file = record.results_file(p, args)
    machine = record.machine_cells()
    if args.record:
        try:
            record.check_section(args.results_file, SECTION, HEADER)
        except record.RecordError as e:
            sys.exit(f"--record: {e}")
    if args.quick:
        args.stack_size, args.batch, args.repeats = 4, 8, 1
    shape = tuple(int(v) for v in args.image_shape.split(","))
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    compile_kernels(torch.float32)
    compile_kernels(torch.float64)
    errors = check(args.width, shape)
    print(
        "float64, 3 models x 4 images, against the loop: max |logits difference| and relative difference of the "
        "gradient's squared norm: " + ", ".join(f"{n} {a:.0e} / {b:.0e}" for n, (a, b) in errors.items())
    )

    torch.manual_seed(0)
    models = build_seeded("cnn", shape, 10, seeds=range(args.stack_size), width=args.width)
    x = torch.randn(args.stack_size, args.batch, *shape)
    y = torch.randint(0, 10, (args.stack_size, args.batch))
    steps = {name: step(build(name, models, shape), x, y) for name in FORMULATIONS}
    for run in steps.values():  # warm-up: allocations, oneDNN primitives
        run()
    times: dict[str, list[float]] = {name: [] for name in FORMULATIONS}
    for r in range(args.repeats):
        order = FORMULATIONS[r % len(FORMULATIONS) :] + FORMULATIONS[: r % len(FORMULATIONS)]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" for n in FORMULATIONS), flush=True)
    load_end = os.getloadavg()[0]
    base = np.array(times["grouped-cl"])
    flops = useful_flops(args.width, shape, args.stack_size, args.batch)
    line = "-" * 78
    print(line)
    print(
        f"one training step, cnn width {args.width}, {'x'.join(map(str, shape))}, K={args.stack_size}, "
        f"batch {args.batch}, threads {args.threads}, 1-min load {load_start:.2f} / {load_end:.2f}"
    )
    print(f"{'formulation':<14}{'best ms':>10}{'GFLOP/s':>10}{'x grouped-cl (median of rounds)':>34}")
    ratio = {}
    for name in FORMULATIONS:
        ratio[name] = float(np.median(base / np.array(times[name])))
        best = min(times[name])
        print(f"{name:<14}{best * 1e3:>10.1f}{flops / best / 1e9:>10.1f}{ratio[name]:>33.2f}x")
    print(line)
    if args.record:
        row = record.append_row(
            args.results_file,
            SECTION,
            HEADER,
            machine
            + [
                f"{args.width:g}",
                "x".join(map(str, shape)),
                str(args.threads),
                str(args.stack_size),
                str(args.batch),
                str(args.repeats),
                f"{load_start:.2f} / {load_end:.2f}",
                record.fmt(min(times["grouped-cl"]) * 1e3, ".0f"),
                *(record.fmt(ratio[n]) for n in FORMULATIONS if n != "grouped-cl"),
                record.fmt(flops / min(times["fused"]) / 1e9, ".1f"),
                record.fmt(flops / min(times["grouped-cl"]) / 1e9, ".1f"),
            ],
            notes=NOTES,
        )
        print(f"recorded in {args.results_file} under '## {SECTION}':\n{row}")


if __name__ == "__main__":
    main()
