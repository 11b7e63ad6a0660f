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

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from dmflow.convnets import build_seeded
from dmflow.stacking import stack_models

ARCHITECTURES = ("logreg", "mlp", "cnn", "resnet9")
VECTOR_ARCHITECTURES = ("logreg", "mlp")


def _uniform_from(param: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    """Fill ``param`` with U(-bound, bound) from a CPU generator (in place on the CPU:
    a stack of 250 MLPs builds in ~15 ms instead of ~22 ms with a copy per tensor)."""
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


def _on_bf16_bits(t: torch.Tensor) -> bool:
    """Whether ReLU works on ``t``'s int16 view: bf16 on the CPU (see ``_ReLUInPlace``)."""
    return t.dtype == torch.bfloat16 and t.device.type == "cpu"


class _ReLUInPlace(torch.autograd.Function):
    """ReLU in place whose backward also works in place: on the incoming gradient.

    ``F.relu(inplace=True)``'s backward (threshold_backward) writes a fresh [K, B, hidden]
    tensor; in a bare training step of the default stack that took ~5 ms of ~25 (a
    new 8 MB buffer per step, cold in cache). Writing into the incoming gradient
    instead gives bit-identical weights, and a whole ``train_stack`` of the default
    (K = 250, bf16, one thread) ran 1.07-1.10x as fast (best and median of 8
    alternated runs; the bare step 1.2x).
    Safe here because in ``StackedMLP`` a ReLU's output feeds only the next
    ``StackedLinear``, whose input gradient is a fresh bmm product nothing else holds.

    On bf16 CPU tensors both passes work on the bit patterns viewed as int16: a bf16
    number is negative exactly when its int16 is, and torch's int16 CPU kernels ran 2-3x
    as fast as its bf16 ones (which convert every element to float32 and back); a whole
    ``train_stack`` of the default ran 1.13x as fast (median of 8 alternated runs; best
    1.08x). The values are the same; -0.0 becomes +0.0, and so does a NaN with its sign
    bit set (x86's default NaN). A model whose loss turns NaN is still marked diverged:
    its loss is checked every step, and its margins come from a float32 pass that keeps
    NaN.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        if _on_bf16_bits(x):
            x.view(torch.int16).clamp_min_(0)
        else:
            x.clamp_min_(0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        if _on_bf16_bits(grad) and _on_bf16_bits(out):
            bits = grad.view(torch.int16)
            torch.ops.aten.threshold_backward.grad_input(bits, out.view(torch.int16), 0, grad_input=bits)
            return grad
        return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


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
                # in place, forward and backward: a fresh [K, B, hidden] tensor per step is cold memory
                h = _ReLUInPlace.apply(h)
        return h


def build_stacked_model(
    arch: str,
    seeds: Sequence[int],
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (),
    width: float = 1.0,
    stacking: str = "auto",
    device: str = "cpu",
) -> nn.Module:
    """The stacked network of K = len(seeds) models for a config's ``model`` section.

    ``logreg``/``mlp`` are batched matmuls over flattened features; ``cnn``,
    ``resnet9`` and ``"package.module:factory"`` models are built one per seed and
    stacked (``dmflow.stacking``). Model i is initialised from ``seeds[i]`` alone.
    """
    if arch in VECTOR_ARCHITECTURES:
        net = StackedMLP(len(seeds), int(math.prod(input_shape)), num_classes, tuple(hidden) if arch == "mlp" else ())
        net.reset_parameters(seeds)
        return net
    return stack_models(build_seeded(arch, input_shape, num_classes, seeds, width), stacking, device)


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """margin = logit[y] - max_{c != y} logit[c]; logits [..., C], labels broadcastable to [...]."""
    labels = labels.expand(logits.shape[:-1])
    correct = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return correct - others.amax(-1)


class StackedEnsembleModule(pl.LightningModule):
    """LightningModule training a stacked network; a batch is (x [K, B, ...], y [K, B]).

    The loss is the sum over models of each model's mean (label-smoothed) cross
    entropy, so each model's gradient is its own. The learning rate is constant or
    triangular (0 -> lr at ``lr_peak_epoch`` -> 0 at the last epoch, per step, as in
    the paper's CIFAR-10 recipe).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        label_smoothing: float = 0.0,
        lr_schedule: str = "constant",
        lr_peak_epoch: float = 5.0,
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
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(np.interp(step, knots, [0.0, 1.0, 0.0])))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
