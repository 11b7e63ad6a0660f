"""Training-time image augmentation, drawn per model and applied on the device.

The random draws (flip, translation offsets, cutout centre) come from each model's
own seed and the epoch, so a model's augmentations do not depend on its
stack-mates; they are applied to a whole stacked batch at once. Fill value 0 is
the training mean of standardised data (FFCV fills with the mean too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmflow.core.schema import defaults

_DEFAULTS = defaults("train")["augment"]


@dataclass(frozen=True)
class AugmentSettings:
    """Config key ``train.augment``: horizontal flip, translation by up to ``translate`` pixels, cutout square side."""

    flip: bool = _DEFAULTS["flip"]
    translate: int = _DEFAULTS["translate"]
    cutout: int = _DEFAULTS["cutout"]

    @property
    def enabled(self) -> bool:
        return self.flip or self.translate > 0 or self.cutout > 0


def draw_params(seed: int, epoch: int, n: int, *, height: int, width: int, aug: AugmentSettings) -> np.ndarray:
    """int64 [n, 5]: flip bit, translation dy, dx (0..2*translate), cutout centre y, x; for one model's epoch."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, 1, epoch])
    params = np.zeros((n, 5), dtype=np.int64)
    params[:, 0] = rng.integers(0, 2, n) if aug.flip else 0
    params[:, 1:3] = rng.integers(0, 2 * aug.translate + 1, (n, 2)) if aug.translate else aug.translate
    if aug.cutout:
        params[:, 3] = rng.integers(0, height, n)
        params[:, 4] = rng.integers(0, width, n)
    return params


def apply(x: torch.Tensor, params: torch.Tensor, aug: AugmentSettings) -> torch.Tensor:
    """Augment images x [N, C, H, W] with per-image ``params`` [N, 5] from :func:`draw_params`."""
    n, _, h, w = x.shape
    if aug.flip:
        x = torch.where(params[:, 0].view(n, 1, 1, 1).bool(), x.flip(-1), x)
    if aug.translate:
        p = aug.translate
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        rows = params[:, 1:2] + torch.arange(h, device=x.device)
        cols = params[:, 2:3] + torch.arange(w, device=x.device)
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        x = padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    if aug.cutout:
        half = aug.cutout // 2
        ys = torch.arange(h, device=x.device).view(1, h, 1) - (params[:, 3].view(n, 1, 1) - half)
        xs = torch.arange(w, device=x.device).view(1, 1, w) - (params[:, 4].view(n, 1, 1) - half)
        hole = (ys >= 0) & (ys < aug.cutout) & (xs >= 0) & (xs < aug.cutout)
        x = x.masked_fill(hole.unsqueeze(1), 0.0)
    return x.contiguous()
