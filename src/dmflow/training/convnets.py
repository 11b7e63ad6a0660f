"""Single-model image architectures, and user model factories.

Each is an ordinary ``nn.Module`` for one model, input [B, C, H, W] -> logits
[B, classes]; ``dmflow.stacking`` turns K of them into one stacked network.

- ``cnn``: a small conv net that trains in seconds on a CPU;
- ``resnet9``: the ResNet-9 of the datamodels paper (the FFCV CIFAR-10 network);
- ``"package.module:factory"``: a user's factory, called as
  ``factory(input_shape=(C, H, W), num_classes=C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dmflow.training.factory import load_factory


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


class Mul(nn.Module):
    """Multiply by a constant (ResNet-9 scales its logits by 0.2)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def _width(channels: int, scale: float) -> int:
    return max(1, int(round(channels * scale)))


def conv_bn(c_in: int, c_out: int, kernel_size: int = 3, *, stride: int = 1, padding: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU, the ResNet-9 building block."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def resnet9(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """The FFCV CIFAR-10 ResNet-9 used by the datamodels paper; ``width`` scales every channel count."""
    c64, c128, c256 = (_width(c, width) for c in (64, 128, 256))
    return nn.Sequential(
        conv_bn(in_channels, c64),
        conv_bn(c64, c128, kernel_size=5, stride=2, padding=2),
        Residual(nn.Sequential(conv_bn(c128, c128), conv_bn(c128, c128))),
        conv_bn(c128, c256),
        nn.MaxPool2d(2),
        Residual(nn.Sequential(conv_bn(c256, c256), conv_bn(c256, c256))),
        conv_bn(c256, c128, padding=0),
        nn.AdaptiveMaxPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(c128, num_classes, bias=False),
        Mul(0.2),
    )


def cnn(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """Two conv-BN-ReLU-maxpool stages (16, 32 channels x width), global average pool, linear."""
    c1, c2 = _width(16, width), _width(32, width)
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1, bias=False),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(c2, num_classes),
    )


def build_single(arch: str, input_shape: Sequence[int], num_classes: int, *, width: float = 1.0) -> nn.Module:
    """One model of ``arch`` for inputs of ``input_shape`` = (C, H, W)."""
    if arch == "cnn":
        return cnn(input_shape[0], num_classes, width)
    if arch == "resnet9":
        return resnet9(input_shape[0], num_classes, width)
    return load_factory(arch)(input_shape=tuple(input_shape), num_classes=num_classes)


def build_seeded(
    arch: str, input_shape: Sequence[int], num_classes: int, *, seeds: Sequence[int], width: float = 1.0
) -> list[nn.Module]:
    """K models, model i initialised from ``seeds[i]`` alone (global RNG forked, not disturbed)."""
    models = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            models.append(build_single(arch, input_shape, num_classes, width=width))
    return models
