"""Training throughput: one Trainer.fit per model vs the stacked K-model ensemble.

What is measured, side by side in one run, on the default data and model
(digits, 1000 training examples, standardised; MLP 64-128-10, 10 epochs, batch
128, Adam lr 0.01, weight decay 1e-3, subsets of round(0.5 * 1000) = 500):

(a0) textbook Lightning, one model at a time: an ``nn.Sequential`` MLP in a plain
    LightningModule, ``DataLoader(TensorDataset(subset), shuffle=True)``, one
    ``Trainer.fit`` per model -- what a user writes without dmflow (the design's
    "fresh Trainer.fit per model" figure);
(a) one by one: ``train_stack`` with K = 1 for each of the first ``--single``
    masks (one ``Trainer.fit`` per model, dmflow's lean data path), models/s;
(b) stacked: one ``train_stack`` with K = ``--stack-size`` on the same first
    masks plus more to fill the stack, models/s;

the ratios (b)/(a0) and (b)/(a), two ways: of the best times over ``--repeats`` rounds,
and the median over rounds of each round's own ratio. A round times half of (a0) and
(a), then (b), then the other halves, so its ratio compares them on the same machine
state, a drift hitting both sides alike; the best times may come from different
minutes, and a shared machine's speed drifts. The goal (>= 20x) is judged on the
median of the rounds. Each round also prints (a)'s and (b)'s rates and the GB/s of a
256 MB copy timed just before (b): the stack is bound by memory traffic, which a shared
machine shares with other tenants.

Where the CPU has bf16 matrix units (AMX) or ``--precision`` is auto, each round also
times the stack of (b) at ``train.precision`` 32 and auto, one ``train_stack`` each, right
next to each other (the one (b) already is not timed twice): their rates and the median
of the rounds' auto/32 ratios say what bf16 buys (auto is float32 on other CPUs, so
the ratio is 1 there by construction).

Then the largest margin difference between (a) and (b) on the models both trained
(stacking must not change what a model learns), the machine's measured matmul FLOP/s
in the training's dtype (``torch.bmm`` on the shapes of the stacked training and one
large square ``torch.matmul``, same thread count), the fraction of those that (b)
achieves, and an estimate of the default run's training time on 2 cores: the shipped
config.yaml's training jobs (one per chunk), each paying the measured start-up of a
fresh process (importing torch and Lightning) and then training its models at (b)'s
rate, spread over the 2 cores. Two jobs at once share the memory bandwidth, so the
real run is slower than this estimate.

Run:  python benchmarks/train_throughput.py [--quick] [--threads 1] [--record]

``--arch cnn`` or ``--arch resnet9`` measures a conv net instead, on synthetic
images of ``--image-shape`` (3,32,32; 1,28,28 is Fashion-MNIST's shape), ``--num-train``
of them, each model on half: (a) one Trainer.fit per model, and the stack of K three
ways, (b) grouped convolutions, (c) a loop over the K models in one step, (d) the fused
kernels (``model.stacking: fused``; cnn only). Each round runs (a)'s first half, the
three stacks (each first in turn) and (a)'s second half, and prints its rates; then the
best rates, the medians of the rounds' own ratios (the goal: (d) >= 2x (b)), the useful
GFLOP/s of each stack and their fraction of ``torch.bmm`` on the same products as
im2col matrices (the machine's float32 matmul rate at those shapes), and how far (d)'s
margins are from (c)'s. The Fashion-MNIST target:
``--arch cnn --width 0.5 --image-shape 1,28,28 --num-train 5000 --stack-size 50
--epochs 5 --threads 2``.

``--quick`` is a tiny version that only checks the script still runs. Nothing is
asserted about wall-clock times; the numbers are printed. ``--record`` also appends
them as one row to benchmarks/RESULTS.md (or ``--results-file``), under
"## train_throughput.py" (conv nets: their own section, as their figures differ).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import LightningEnvironment
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dmflow.config import load_config
from dmflow.data.augment import AugmentSettings
from dmflow.data.cifar10 import synthetic_images
from dmflow.data.prepare import prepare_data
from dmflow.store.masks import draw_masks, subset_size
from dmflow.training.module import margins_from_logits
from dmflow.training.predict import StackResult
from dmflow.training.settings import TrainSettings
from dmflow.training.train import train_stack
from dmflow.training.trainer import bf16_training_pays, lightning_precision, quiet_lightning

import record

ROOT = Path(__file__).resolve().parents[1]  # for config.yaml

DATASET = {"name": "digits", "num_train": 1000, "num_targets": None, "standardize": True}
ALPHA = 0.5
DEFAULT_CORES = 2

SECTION = "train_throughput.py"
HEADER = (
    "threads",
    "K",
    "single",
    "epochs",
    "rounds",
    "precision",
    "1-min load",
    "(a0) models/s",
    "(a) models/s",
    "(b) models/s",
    "(b)/(a0) best",
    "(b)/(a0) median",
    "(b)/(a) best",
    "(b)/(a) median",
    "copy GB/s",
    "(b) 32 models/s",
    "(b) auto models/s",
    "auto/32 median",
    "bmm GFLOP/s",
    "(b) of bmm",
    "default run est. s",
    "max margin diff",
)
NOTES = """\
The MLP stack (`python benchmarks/train_throughput.py`; see its docstring). **threads**: torch threads;
**K**: models in the stack (b); **single**: models trained one `Trainer.fit` each in (a0) and (a);
**epochs**; **rounds**: `--repeats`; **precision**: `--precision` of (a) and (b) and the Lightning flag it
became; **1-min load**: load average at start / after the rounds. **(a0)**, **(a)**, **(b)** models/s: textbook
Lightning one model at a time, dmflow one `Trainer.fit` per model, the stack; of the best time over the
rounds. **(b)/(a0)**, **(b)/(a)**: the ratio of the best times, and the median of each round's own ratio (the
goal, >= 20x, is judged on the median). **copy GB/s**: median over rounds of a 256 MB copy timed before (b).
**(b) 32**, **(b) auto**: the stack at `train.precision` 32 and auto in the same rounds, best time, and the
median of the rounds' auto/32 ratios (`-`: not measured, i.e. no AMX and `--precision` not auto).
**bmm GFLOP/s**: `torch.bmm` on the stack's first-layer shapes in the training dtype; **(b) of bmm**: the
fraction of it (b) achieves; **default run est. s**: the estimated training time of config.yaml's run on 2
cores; **max margin diff**: max |margin(a) - margin(b)| on the models both trained."""

CONV_SECTION = "train_throughput.py --arch cnn / resnet9"
CONV_HEADER = (
    "arch",
    "width",
    "image",
    "n",
    "threads",
    "K",
    "single",
    "epochs",
    "batch",
    "rounds",
    "precision",
    "1-min load",
    "(a) models/s",
    "(b) grouped models/s",
    "(c) loop models/s",
    "(d) fused models/s",
    "(d)/(b) median",
    "(d)/(c) median",
    "(d)/(a) median",
    "(c)/(b) median",
    "(d) GFLOP/s",
    "(b) GFLOP/s",
    "bmm GFLOP/s",
    "(d) of bmm",
    "matmul GFLOP/s",
    "(d) of matmul",
    "max margin diff (d)-(c)",
    "max margin diff (b)-(c)",
)
CONV_NOTES = """\
The conv nets on synthetic images (`python benchmarks/train_throughput.py --arch cnn|resnet9 --image-shape C,H,W`;
see its docstring). **arch**, **width** (channel multiplier), **image** (C x H x W), **n** (training images; each
model trains on round(0.5 n)), **threads**, **K** (models in the stacks), **single** (models trained one
`Trainer.fit` each), **epochs**, **batch** (images per model per step), **rounds** (`--repeats`), **precision**
(`--precision` and the Lightning flag), **1-min load** (at start / at the end); models/s of the best time over
the rounds of **(a)** one `Trainer.fit` per model, the stack of K with **(b)** grouped convolutions, **(c)** a loop
over its models in one step, **(d)** the fused kernels (`model.stacking: fused`), and the medians of the rounds'
own ratios of those rates (a round runs all four side by side). **(d) GFLOP/s**, **(b) GFLOP/s**: the useful
FLOPs (forward, weight and input gradients of every layer, the first layer's input gradient excepted, and the
final margins pass) per second at those rates; **bmm GFLOP/s**: `torch.bmm` on the same products as im2col
matrices ([K, B*H*W, 9C] x [K, 9C, O] and the two gradient products, per layer) at the same thread count;
**(d) of bmm**: the fraction of it that (d) achieves; **matmul GFLOP/s**, **(d) of matmul**: the same for one
2048 x 2048 float32 matmul (the machine's matmul rate at its best shape); **max margin diff**: the largest
difference of a margin between (d) and (c), and between (b) and (c), over the K models (float32 rounding
differs between the stacks, and training carries it on: the second is its size between two torch paths)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--single", type=int, default=16, help="models trained one Trainer.fit each (a)")
    p.add_argument("--stack-size", type=int, default=250, help="K of the stacked run (b)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the train rule's default is 1)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="*", default=[128])
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="rounds of (a0), (a), (b); the best time of each and the median of the rounds' ratios are printed",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "32", "bf16"),
        default="auto",
        help="train.precision of (a) and (b) (auto: bf16 on CUDA and AMX CPUs, else float32)",
    )
    p.add_argument("--arch", choices=("mlp", "cnn", "resnet9"), default="mlp")
    p.add_argument("--width", type=float, default=1.0, help="conv nets: channel multiplier")
    p.add_argument(
        "--image-shape",
        default="3,32,32",
        help="conv nets: C,H,W of the synthetic images (1,28,28: Fashion-MNIST's shape; C of 1 or 3)",
    )
    p.add_argument("--num-train", type=int, default=1000, help="conv nets: training images n (subsets of 0.5 n)")
    p.add_argument("--batch-size", type=int, default=100, help="conv nets: images per model per step")
    p.add_argument("--quick", action="store_true", help="tiny sizes: only checks that the script runs")
    record.add_arguments(p)
    args = p.parse_args(argv)
    args.results_file = record.results_file(p, args)
    if args.arch != "mlp":  # conv nets: smaller defaults (minutes, not hours, on 2 cores)
        args.single = 4 if args.single == 16 else args.single
        args.stack_size = 16 if args.stack_size == 250 else args.stack_size
        args.epochs = 4 if args.epochs == 10 else args.epochs
    if args.quick:
        args.single, args.stack_size, args.epochs, args.repeats = 2, min(args.stack_size, 8), min(args.epochs, 2), 1
    args.single = min(args.single, args.stack_size)
    args.image_shape = tuple(int(v) for v in str(args.image_shape).split(","))
    if len(args.image_shape) != 3 or args.image_shape[0] not in (1, 3):
        p.error(f"--image-shape {args.image_shape}: C,H,W with C of 1 or 3")
    if args.quick:
        args.num_train = min(args.num_train, 250)
    return args


def settings_for(args: argparse.Namespace, k: int, precision: str | None = None) -> TrainSettings:
    """config.yaml's model and train sections, with stack_size k, on the CPU (``--precision`` unless given)."""
    return TrainSettings(
        arch="mlp",
        hidden=tuple(args.hidden),
        epochs=args.epochs,
        batch_size=128,
        optimizer="adam",
        lr=0.01,
        weight_decay=1e-3,
        stack_size=k,
        device="cpu",
        precision=precision or args.precision,
    )


class TextbookMLP(pl.LightningModule):
    """The MLP as a user writes it without dmflow: one model, one LightningModule."""

    def __init__(self, widths: list[int], lr: float, weight_decay: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
        self.net = nn.Sequential(*layers)
        self.lr, self.weight_decay = lr, weight_decay

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def textbook_fit(data: dict, subset: np.ndarray, seed: int, widths: list[int], epochs: int) -> np.ndarray:
    """(a0): train one model the textbook way and return its margins on the targets."""
    torch.manual_seed(seed)
    model = TextbookMLP(widths, lr=0.01, weight_decay=1e-3)
    x = torch.as_tensor(data["X_train"][subset])
    y = torch.as_tensor(data["y_train"][subset])
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[LightningEnvironment()],
    )
    trainer.fit(model, loader)
    with torch.no_grad():
        logits = model.net(torch.as_tensor(data["X_target"]))
    return margins_from_logits(logits, torch.as_tensor(data["y_target"])).numpy()


def default_run_jobs() -> list[int]:
    """Models per training job of the shipped config.yaml: one job per fit chunk and per eval chunk."""
    masks = load_config(ROOT / "config.yaml")["masks"]
    fit = [masks["chunk_size"]] * (masks["fit_models"] // masks["chunk_size"])
    per_eval_job = masks["eval_chunk_size"] * masks["eval_replicates"]
    return fit + [per_eval_job] * (masks["eval_models"] // masks["eval_chunk_size"])


def process_startup_seconds(repeats: int = 2) -> float:
    """Best wall time of a fresh Python importing dmflow.training.train (torch and Lightning): what every job pays first."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dmflow.training.train"], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def makespan(job_seconds: list[float], cores: int) -> float:
    """Wall time of independent jobs on ``cores`` workers, longest first, each to the least loaded worker."""
    loads = [0.0] * cores
    for t in sorted(job_seconds, reverse=True):
        loads[loads.index(min(loads))] += t
    return max(loads)


def copy_bandwidth(megabytes: int = 256, repeats: int = 3) -> float:
    """GB/s of one thread copying a float32 array of ``megabytes`` (read + write counted), best of ``repeats``.

    The stack is bound by memory traffic and this machine's bandwidth is shared with
    other tenants, so each round prints it next to the rates it paired.
    """
    src = torch.ones(megabytes * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src))[0] for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / best / 1e9


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_time(fn: Callable[[], object], min_seconds: float = 0.2, repeats: int = 5) -> float:
    """Best per-call time over ``repeats`` timings of as many calls as fill ``min_seconds``."""
    fn()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < 0.1 or calls < 2:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    n = max(1, int(min_seconds / max(per_call, 1e-9)))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def measure_matmul(k: int, batch: int, d: int, h: int, c: int, quick: bool, dtype: torch.dtype) -> dict[str, float]:
    """FLOP/s in ``dtype`` of bmm on the training's shapes and of a large square matmul."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    x, w1, w2 = rand(k, batch, d), rand(k, d, h), rand(k, h, c)
    a1, gy = rand(k, batch, h), rand(k, batch, c)
    shapes = {
        # forward layer 1 and its weight gradient, the bulk of the FLOPs
        f"bmm [{k},{batch},{d}]x[{k},{d},{h}]": (lambda: torch.bmm(x, w1), 2 * k * batch * d * h),
        f"bmm [{k},{d},{batch}]x[{k},{batch},{h}]": (lambda: torch.bmm(x.transpose(1, 2), a1), 2 * k * batch * d * h),
        # layer 2 forward (the thin one)
        f"bmm [{k},{batch},{h}]x[{k},{h},{c}]": (lambda: torch.bmm(a1, w2), 2 * k * batch * h * c),
        f"bmm [{k},{batch},{c}]x[{k},{c},{h}]": (lambda: torch.bmm(gy, w2.transpose(1, 2)), 2 * k * batch * h * c),
    }
    out = {}
    for name, (fn, flops) in shapes.items():
        out[name] = flops / best_time(fn, 0.05 if quick else 0.2)
    size = 512 if quick else 2048
    a, b = rand(size, size), rand(size, size)
    out[f"matmul [{size},{size}]^2"] = 2 * size**3 / best_time(lambda: a @ b, 0.05 if quick else 0.3)
    return out


def conv_flops(arch_model: nn.Module, image: tuple[int, ...]) -> tuple[list[tuple[int, int, int, int]], int]:
    """The conv layers of one model as (H, W, C_in, C_out) at their input, and one image's forward FLOPs."""
    layers, fwd = [], 0
    h, w = image[1], image[2]
    for m in arch_model.modules():
        if isinstance(m, nn.Conv2d):
            h = (h + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
            w = (w + 2 * m.padding[1] - m.kernel_size[1]) // m.stride[1] + 1
            layers.append((h, w, m.in_channels, m.out_channels))
            fwd += 2 * h * w * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.MaxPool2d):
            h, w = h // 2, w // 2
        elif isinstance(m, nn.Linear):
            fwd += 2 * m.in_features * m.out_features
    return layers, fwd


def conv_bmm_rate(layers: list[tuple[int, int, int, int]], k: int, batch: int, quick: bool) -> tuple[float, float]:
    """float32 ``torch.bmm`` GFLOP/s on a training step's conv products as im2col matrices, and of a square matmul.

    Per layer: the forward [K, B*H*W, 9C] x [K, 9C, O], the weight gradient [K, 9C, B*H*W] x
    [K, B*H*W, O] and (all but the first layer) the input gradient [K, B*H*W, O] x [K, O, 9C];
    the rate is their FLOPs over their summed best times.
    """
    g = torch.Generator().manual_seed(0)
    flops = seconds = 0.0
    for i, (h, w, cin, cout) in enumerate(layers):
        rows, inner = batch * h * w, 9 * cin
        cols = torch.randn(k, rows, inner, generator=g)
        weight = torch.randn(k, inner, cout, generator=g)
        out = torch.randn(k, rows, cout, generator=g)
        products = [partial(torch.bmm, cols, weight), partial(torch.bmm, cols.transpose(1, 2), out)]
        if i > 0:
            products.append(partial(torch.bmm, out, weight.transpose(1, 2)))
        for fn in products:
            seconds += best_time(fn, 0.05 if quick else 0.2, repeats=3)
            flops += 2.0 * k * rows * inner * cout
    size = 512 if quick else 2048
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    square = 2 * size**3 / best_time(lambda: a @ b, 0.05 if quick else 0.3)
    return flops / seconds / 1e9, square / 1e9


def conv_benchmark(args: argparse.Namespace, machine: list[str]) -> None:
    """cnn / resnet9 on synthetic images: one by one, and the stack grouped, as a loop and fused, side by side."""
    from dmflow.training.convnets import build_single

    load_start = os.getloadavg()[0]
    c, h, w = args.image_shape
    n = args.num_train
    x, y = synthetic_images(n + 200, 10, seed=0, size=h)
    x = ((x[:, :c, :, :w] / 255.0 - 0.5) / 0.25).astype(np.float32)
    data = {
        "X_train": x[:n],
        "y_train": y[:n],
        "X_target": x[n : n + 200],
        "y_target": y[n : n + 200],
        "num_classes": 10,
    }
    k_sub = subset_size(ALPHA, n)
    K = args.stack_size
    rng = np.random.default_rng(0)
    subsets = np.stack([np.sort(rng.choice(n, k_sub, replace=False)) for _ in range(K)])
    seeds = np.arange(K)
    flag = lightning_precision(args.precision, "cpu")

    def settings(stacking: str, k: int) -> TrainSettings:
        return TrainSettings(
            arch=args.arch,
            width=args.width,
            stacking=stacking,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer="sgd",
            lr=0.05,
            weight_decay=5e-4,
            label_smoothing=0.1,
            augment=AugmentSettings(flip=True, translate=2),
            stack_size=k,
            device="cpu",
            precision=args.precision,
        )

    def run(idx: np.ndarray, stacking: str) -> StackResult:
        return train_stack(data, subsets[idx], seeds[idx], settings=settings(stacking, len(idx)))

    stacks = ("grouped", "loop", "fused")
    fused_ok = True
    try:
        run(np.arange(1), "fused")  # warm-up; compiles (or loads) the kernels
    except ValueError as exc:  # resnet9, odd sizes: the fused kernels do not apply
        print(f"(d) fused: {exc}")
        fused_ok, stacks = False, ("grouped", "loop")
    run(np.arange(1), "grouped")
    halves = (range(args.single // 2), range(args.single // 2, args.single))
    best = {name: math.inf for name in ("one", *stacks)}
    ratios: dict[str, list[float]] = {"d/b": [], "d/c": [], "d/a": [], "c/b": []}
    results: dict[str, StackResult] = {}
    for r in range(args.repeats):
        t_one, _ = timed(lambda: [run(np.array([i]), "loop") for i in halves[0]])
        order = stacks[r % len(stacks) :] + stacks[: r % len(stacks)]  # each stack first in turn
        times = {}
        for name in order:
            times[name], results[name] = timed(partial(run, np.arange(K), name))
        t_two, _ = timed(lambda: [run(np.array([i]), "loop") for i in halves[1]])
        times["one"] = t_one + t_two
        best = {name: min(best[name], times[name]) for name in best}
        rate = {name: (args.single if name == "one" else K) / t for name, t in times.items()}
        ratios["c/b"].append(rate["loop"] / rate["grouped"])
        if fused_ok:
            ratios["d/b"].append(rate["fused"] / rate["grouped"])
            ratios["d/c"].append(rate["fused"] / rate["loop"])
            ratios["d/a"].append(rate["fused"] / rate["one"])
        print(
            f"round {r + 1}: models/s "
            + ", ".join(f"{name} {rate[name]:.3f}" for name in ("one", *stacks))
            + f"  (1-min load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    rates = {name: (args.single if name == "one" else K) / t for name, t in best.items()}
    load_end = os.getloadavg()[0]
    median = {key: float(np.median(v)) if v else None for key, v in ratios.items()}

    layers, fwd = conv_flops(build_single(args.arch, args.image_shape, 10, width=args.width), args.image_shape)
    first = 2 * layers[0][0] * layers[0][1] * layers[0][2] * layers[0][3] * 9
    train_example = 3 * fwd - first  # forward + both gradients of every layer, but the first layer's input gradient
    flops_model = args.epochs * k_sub * train_example + fwd * (200 + k_sub)  # + the final margins/accuracy pass
    bmm, square = conv_bmm_rate(layers, K, args.batch_size, args.quick)
    gflops = {name: flops_model * rates[name] / 1e9 for name in stacks}
    margin_diff = float(np.abs(results["fused"].margins - results["loop"].margins).max()) if fused_ok else None
    torch_diff = float(np.abs(results["grouped"].margins - results["loop"].margins).max())

    line = "-" * 78
    print(line)
    print(
        f"conv throughput  {args.arch} width {args.width}  torch {torch.__version__}  threads {args.threads}  "
        f"1-min load {load_start:.2f} at start, {load_end:.2f} at the end{'  [QUICK]' if args.quick else ''}"
    )
    print(
        f"synthetic {c}x{h}x{w}, n={n}, subset {k_sub}, {args.epochs} epochs, batch {args.batch_size}, SGD, "
        f"flip + translate, train.precision={args.precision} -> {flag}"
    )
    print(line)
    print(f"{'run (best of ' + str(args.repeats) + ')':<38}{'models':>8}{'seconds':>10}{'models/s':>12}")
    names = {"one": "(a) one Trainer.fit per model", "grouped": "(b) stacked, grouped convolutions"}
    names |= {"loop": "(c) stacked, loop in one step", "fused": "(d) stacked, fused kernels"}
    for name in ("one", *stacks):
        models = args.single if name == "one" else K
        print(f"{names[name]:<38}{models:>8}{best[name]:>10.2f}{rates[name]:>12.3f}")
    print(
        "medians of the rounds' ratios: "
        + ", ".join(
            f"({a})/({b}) {median[a + '/' + b]:.2f}x" for a, b in ("db", "dc", "da", "cb") if median[a + "/" + b]
        )
    )
    if fused_ok:
        print(f"goal (d) >= 2x (b): {'met' if median['d/b'] >= 2 else 'NOT met'} ({median['d/b']:.2f}x)")
    print(line)
    print(
        f"useful FLOPs per model {flops_model / 1e9:.2f} G (forward {fwd / 1e6:.2f} M per image; train 3x forward less "
        f"the first layer's input gradient, x {args.epochs} epochs x {k_sub}; + the final pass)"
    )
    for name in stacks:
        print(
            f"  {names[name]:<36} {gflops[name]:7.1f} GFLOP/s = {gflops[name] / bmm:6.1%} of bmm at the same shapes, "
            f"{gflops[name] / square:6.1%} of the square matmul"
        )
    print(
        f"float32 bmm on the step's im2col products (K={K}, B={args.batch_size}): {bmm:.1f} GFLOP/s; "
        f"square matmul {square:.1f} GFLOP/s"
    )
    if fused_ok:
        accs = ", ".join(f"{name} {float(results[name].acc_target.mean()):.3f}" for name in stacks)
        print(
            f"max |margin(d) - margin(c)| over the K models: {margin_diff:.2e} (|margin(b) - margin(c)|: "
            f"{torch_diff:.2e}); mean target accuracy {accs}"
        )
    print(line)
    if args.record:
        fmt = record.fmt
        row = record.append_row(
            args.results_file,
            CONV_SECTION,
            CONV_HEADER,
            machine
            + [
                args.arch,
                f"{args.width:g}",
                "x".join(map(str, args.image_shape)),
                str(n),
                str(args.threads),
                str(K),
                str(args.single),
                str(args.epochs),
                str(args.batch_size),
                str(args.repeats),
                f"{args.precision} ({flag})",
                f"{load_start:.2f} / {load_end:.2f}",
                fmt(rates["one"]),
                fmt(rates["grouped"]),
                fmt(rates["loop"]),
                fmt(rates.get("fused")),
                fmt(median["d/b"]),
                fmt(median["d/c"]),
                fmt(median["d/a"]),
                fmt(median["c/b"]),
                fmt(gflops.get("fused"), ".1f"),
                fmt(gflops["grouped"], ".1f"),
                fmt(bmm, ".1f"),
                fmt(100 * gflops["fused"] / bmm, ".1f") + "%" if fused_ok else "-",
                fmt(square, ".1f"),
                fmt(100 * gflops["fused"] / square, ".1f") + "%" if fused_ok else "-",
                fmt(margin_diff, ".1e"),
                fmt(torch_diff, ".1e"),
            ],
            notes=CONV_NOTES,
        )
        print(f"recorded in {args.results_file} under '## {CONV_SECTION}':\n{row}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = record.machine_cells()  # when and on what the run started
    if args.record:  # a table with another header: say so now, not after minutes of timing
        try:
            record.check_section(
                args.results_file, *((SECTION, HEADER) if args.arch == "mlp" else (CONV_SECTION, CONV_HEADER))
            )
        except record.RecordError as e:
            sys.exit(f"--record: {e}")
    quiet_lightning()
    if args.arch != "mlp":
        torch.set_num_threads(args.threads)
        conv_benchmark(args, machine)
        return
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")  # Lightning, where SLURM is installed
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    load_start = os.getloadavg()[0]
    data = prepare_data(DATASET, seed=0)
    n, d = data["X_train"].shape[0], int(np.prod(data["X_train"].shape[1:]))
    num_classes, num_targets = int(data["num_classes"]), data["X_target"].shape[0]
    k_sub = subset_size(ALPHA, n)
    K = args.stack_size
    masks = draw_masks(n, ALPHA, K, rng=np.random.default_rng(0))
    subsets = np.stack([np.flatnonzero(m) for m in masks])
    seeds = np.random.default_rng(1).integers(0, 2**62, size=K, dtype=np.int64)

    def run(rows: slice, precision: str | None = None) -> StackResult:
        idx = np.arange(K)[rows]
        return train_stack(data, subsets[idx], seeds[idx], settings=settings_for(args, len(idx), precision))

    # (b) at train.precision 32 and auto, where that can differ (AMX) or auto is asked for: the one
    # of them (b) is not is timed once more per round, next to (b)
    flag = lightning_precision(args.precision, "cpu")
    compare = bf16_training_pays() or args.precision == "auto"
    extra = [p for p in ("32", "auto") if lightning_precision(p, "cpu") != flag] if compare else []

    # warm-up: imports, Lightning's first-fit set-up, allocator, thread pool
    run(slice(0, 1))
    run(slice(0, min(K, 16)))
    for p in extra:
        run(slice(0, min(K, 16)), p)

    # (a) one Trainer.fit per model, (b) the stack on the same first masks and seeds;
    # interleaved and repeated, the best time of each kept (other processes add noise)
    widths = [d, *args.hidden, num_classes]
    textbook_fit(data, subsets[0], 0, widths, args.epochs)  # warm-up
    t_textbook = t_single = t_stack = math.inf
    paired_a0, paired_a = [], []  # per round: (b)/(a0) and (b)/(a)
    round_rates, round_bandwidth = [], []  # per round: ((a) models/s, (b) models/s), copy GB/s before (b)
    t_extra = dict.fromkeys(extra, math.inf)
    paired_prec: list[float] = []  # per round: auto/32 of the stack's rates
    stacked_extra: dict[str, StackResult] = {}
    halves = (range(args.single // 2), range(args.single // 2, args.single))

    def textbook(models: range) -> tuple[float, object]:
        return timed(lambda: [textbook_fit(data, subsets[i], i, widths, args.epochs) for i in models])

    def one_by_one(models: range) -> tuple[float, list[StackResult]]:
        return timed(lambda: [run(slice(i, i + 1)) for i in models])

    for r in range(args.repeats):
        # half of (a0) and (a) before (b), half after: a drift in machine speed hits both sides alike
        t0_first, _ = textbook(halves[0])
        t1_first, first = one_by_one(halves[0])
        round_bandwidth.append(copy_bandwidth(16 if args.quick else 256))
        # the other precision's stack before (b) in odd rounds, after it in even ones
        extra_times = {}
        for p in extra if r % 2 else []:
            extra_times[p], stacked_extra[p] = timed(partial(run, slice(0, K), p))
        t2, stacked = timed(lambda: run(slice(0, K)))
        for p in [] if r % 2 else extra:
            extra_times[p], stacked_extra[p] = timed(partial(run, slice(0, K), p))
        if compare:
            by_prec = {p: extra_times.get(p, t2) for p in ("32", "auto")}
            paired_prec.append(by_prec["32"] / by_prec["auto"])
            t_extra = {p: min(t_extra[p], extra_times[p]) for p in extra}
        t1_second, second = one_by_one(halves[1])
        t0_second, _ = textbook(halves[1])
        t0, t1, singles = t0_first + t0_second, t1_first + t1_second, first + second
        t_textbook, t_single, t_stack = min(t_textbook, t0), min(t_single, t1), min(t_stack, t2)
        paired_a0.append((K / t2) / (args.single / t0))
        paired_a.append((K / t2) / (args.single / t1))
        round_rates.append((args.single / t1, K / t2))
    threads_after = torch.get_num_threads()
    load_end = os.getloadavg()[0]
    rate_prec = {p: K / t_extra.get(p, t_stack) for p in ("32", "auto")} if compare else {}
    acc_prec = {
        p: float(stacked_extra[p].acc_target.mean()) if p in stacked_extra else float(stacked.acc_target.mean())
        for p in rate_prec
    }

    rate_a0 = args.single / t_textbook
    rate_a = args.single / t_single
    rate_b = K / t_stack
    margins_a = np.concatenate([r.margins for r in singles])
    margin_diff = float(np.abs(margins_a - stacked.margins[: args.single]).max())
    acc_b = float(stacked.acc_target.mean())

    # FLOPs per model, analytically: forward 2*(d*h + h*C) per example
    fwd = 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))  # per example
    steps = args.epochs * math.ceil(k_sub / 128)
    train_flops = 3 * fwd * args.epochs * k_sub  # fwd + bwd ~ 3x fwd (the usual count)
    eval_flops = fwd * (num_targets + k_sub)  # margins on the targets + accuracy on the subset
    flops_model = train_flops + eval_flops
    achieved = flops_model * rate_b

    matmul_dtype = torch.bfloat16 if flag == "bf16-mixed" else torch.float32
    peaks = measure_matmul(
        K, 128, d, args.hidden[0] if args.hidden else num_classes, num_classes, args.quick, matmul_dtype
    )
    bmm_main = next(v for k_, v in peaks.items() if k_.startswith("bmm"))
    square = next(v for k_, v in peaks.items() if k_.startswith("matmul"))

    jobs = default_run_jobs()
    startup = process_startup_seconds(1 if args.quick else 2)
    est_s = makespan([startup + models / rate_b for models in jobs], DEFAULT_CORES)

    line = "-" * 72
    print(line)
    print(
        f"train throughput  torch {torch.__version__}  threads {args.threads} (after fit: {threads_after})  "
        f"1-min load average {load_start:.2f} at start, {load_end:.2f} after (b){'  [QUICK]' if args.quick else ''}"
    )
    print(
        f"data digits n={n} d={d} C={num_classes} targets={num_targets}; subset k={k_sub}; "
        f"MLP {'-'.join(map(str, widths))}; {args.epochs} epochs x {math.ceil(k_sub / 128)} steps of B<=128"
    )
    print(
        f"precision of (a) and (b): train.precision={args.precision} -> {flag}"
        f" (bf16 chosen for auto: {bf16_training_pays()}); (a0) is Lightning's default, 32-true; margins in float32"
    )
    print(line)
    print(f"{'run (best of ' + str(args.repeats) + ')':<34}{'models':>8}{'seconds':>10}{'models/s':>12}")
    print(f"{'(a0) textbook Lightning, per model':<34}{args.single:>8}{t_textbook:>10.2f}{rate_a0:>12.2f}")
    print(f"{'(a) dmflow, one Trainer.fit/model':<34}{args.single:>8}{t_single:>10.2f}{rate_a:>12.2f}")
    print(f"{'(b) stacked, one Trainer.fit':<34}{K:>8}{t_stack:>10.2f}{rate_b:>12.2f}")
    for name, rate, paired in (("(b)/(a0)", rate_a0, paired_a0), ("(b)/(a) ", rate_a, paired_a)):
        median = float(np.median(paired))
        print(
            f"ratio {name}: {rate_b / rate:.1f}x of the best times; per round {', '.join(f'{r:.1f}' for r in paired)}"
            f" -> median {median:.1f}x   (goal >= 20x: {'met' if median >= 20 else 'NOT met'})"
        )
    print(
        "per round, (a) and (b) models/s and the memory copy GB/s before (b): "
        + "; ".join(f"{a:.1f}, {b:.0f}, {bw:.1f}" for (a, b), bw in zip(round_rates, round_bandwidth))
    )
    print(
        f"max |margin(a) - margin(b)| on the {args.single} shared models: {margin_diff:.2e}"
        f"   (stacked mean target accuracy {acc_b:.3f})"
    )
    if compare:
        print(
            f"(b) by train.precision, best of {args.repeats}: "
            + ", ".join(
                f"{p} ({lightning_precision(p, 'cpu')}) {rate_prec[p]:.2f} models/s, mean target accuracy "
                f"{acc_prec[p]:.3f}"
                for p in ("32", "auto")
            )
            + f"; auto/32 per round {', '.join(f'{r:.2f}' for r in paired_prec)} -> median "
            f"{float(np.median(paired_prec)):.2f}x" + ("" if extra else " (the same precision here: auto is 32-true)")
        )
    else:
        print(f"(b) at train.precision 32 vs auto: not measured (no AMX, and --precision is {args.precision})")
    print(line)
    dtype_name = str(matmul_dtype).removeprefix("torch.")
    print(f"{dtype_name + ' matmul, ' + str(args.threads) + ' thread(s), best of 5':<44}{'GFLOP/s':>10}")
    for name, v in peaks.items():
        print(f"  {name:<42}{v / 1e9:>10.1f}")
    print(line)
    print(
        f"FLOPs per model: train 3 x fwd x {args.epochs} x {k_sub} = {train_flops / 1e6:.1f} M"
        f" (+ final margins/accuracy pass {eval_flops / 1e6:.2f} M); {steps} optimizer steps"
    )
    print(
        f"(b) achieves {achieved / 1e9:.2f} GFLOP/s (train + final pass) = {achieved / bmm_main:.1%} of the bmm "
        f"[{K},128,{d}]x[{K},{d},{widths[1]}] rate, {achieved / square:.1%} of the square-matmul rate"
    )
    print(
        "    (3x-forward convention; layer 1's input gradient is never computed, so the FLOPs"
        f" executed are ~{(fwd + 2 * fwd - 2 * d * widths[1]) / (3 * fwd):.0%} of that)"
    )
    print(line)
    print(
        f"ESTIMATE, default run's training (config.yaml: {sum(jobs)} models in {len(jobs)} jobs of {max(jobs)} or fewer) "
        f"on {DEFAULT_CORES} cores: {est_s:.0f} s ({est_s / 60:.1f} min)"
    )
    print(
        f"    each job: {startup:.1f} s start-up (a fresh process importing torch and Lightning, measured) + its models "
        f"at (b)'s rate; two jobs at once share the memory bandwidth, so the real run takes longer"
    )
    print(line)
    if args.record:
        fmt = record.fmt
        row = record.append_row(
            args.results_file,
            SECTION,
            HEADER,
            machine
            + [
                str(args.threads),
                str(K),
                str(args.single),
                str(args.epochs),
                str(args.repeats),
                f"{args.precision} ({flag})",
                f"{load_start:.2f} / {load_end:.2f}",
                fmt(rate_a0),
                fmt(rate_a),
                fmt(rate_b),
                fmt(rate_b / rate_a0, ".1f"),
                fmt(float(np.median(paired_a0)), ".1f"),
                fmt(rate_b / rate_a, ".1f"),
                fmt(float(np.median(paired_a)), ".1f"),
                fmt(float(np.median(round_bandwidth)), ".1f"),
                fmt(rate_prec.get("32")),
                fmt(rate_prec.get("auto")),
                fmt(float(np.median(paired_prec)) if paired_prec else None),
                fmt(bmm_main / 1e9, ".1f"),
                fmt(100 * achieved / bmm_main, ".1f") + "%",
                fmt(est_s, ".0f"),
                fmt(margin_diff, ".1e"),
            ],
            notes=NOTES,
        )
        print(f"recorded in {args.results_file} under '## {SECTION}':\n{row}")


if __name__ == "__main__":
    main()
