"""The stacked network of K models for a config's ``model`` section."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from dmflow.training.convnets import build_seeded
from dmflow.training.mlp import StackedMLP
from dmflow.training.stacking import stack_models

VECTOR_ARCHITECTURES = ("logreg", "mlp")
"""Architectures over flattened features (batched matmuls); the others take images [C, H, W]."""


def build_stacked_model(
    arch: str,
    seeds: Sequence[int],
    input_shape: Sequence[int],
    *,
    num_classes: int,
    hidden: Sequence[int] = (),
    width: float = 1.0,
    stacking: str = "auto",
    device: str = "cpu",
    batch_size: int = 100,
    bf16: bool = False,
) -> nn.Module:
    """The stacked network of K = len(seeds) models; input [K, B, *input_shape] -> logits [K, B, num_classes].

    ``logreg``/``mlp`` are batched matmuls over flattened features; ``cnn``,
    ``resnet9`` and ``"package.module:factory"`` models are built one per seed and
    stacked (``dmflow.training.stacking``; ``batch_size`` and ``bf16``, the training's
    batch per model and autocast, inform ``stacking: auto``'s probe). Model i is
    initialised from ``seeds[i]`` alone.
    """
    if arch in VECTOR_ARCHITECTURES:
        net = StackedMLP(
            len(seeds), int(math.prod(input_shape)), num_classes, hidden=tuple(hidden) if arch == "mlp" else ()
        )
        net.reset_parameters(seeds)
        return net
    models = build_seeded(arch, input_shape, num_classes, seeds=seeds, width=width)
    return stack_models(models, stacking, device, input_shape=input_shape, batch_size=batch_size, bf16=bf16)
