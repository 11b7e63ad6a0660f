"""What a trained stack reports: each model's margins on the targets and its accuracies, evaluated in slices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dmflow.data.batches import gather_rows
from dmflow.training.module import margins_from_logits


@dataclass
class StackResult:
    """What one trained stack of K models reports."""

    margins: np.ndarray  # float32 [K, T]
    acc_target: np.ndarray  # float32 [K]
    acc_subset: np.ndarray  # float32 [K]
    finite_loss: np.ndarray  # bool [K]
    state: dict = field(default_factory=dict)


def _logits(net: torch.nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Stacked logits [K, B, C] (half precision raised to float32); averaged with the mirrored images when ``flip``."""
    out = net(x)
    if flip:
        out = (out + net(x.flip(-1))) / 2
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


def predict_stack(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_target: np.ndarray,
    y_target: np.ndarray,
    subsets: np.ndarray,
    batch_size: int,
    flip: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Margins float32 [K, T] and accuracy on the targets [K] and on each model's own subset [K].

    ``x`` [N, ...] and ``y`` [N] are the training set, ``subsets`` int [K, k] each
    model's training examples. Evaluated in slices of ``batch_size`` examples, so K x T
    images never sit in memory at once.
    """
    dev = next(net.parameters()).device
    k_models = subsets.shape[0]
    xt = torch.as_tensor(x_target, dtype=x.dtype, device=dev)
    yt = torch.as_tensor(y_target, dtype=torch.long, device=dev)
    margins, hits_t, hits_s = [], [], []
    step = max(1, int(batch_size))
    with torch.no_grad():
        for start in range(0, len(xt), step):
            xb, yb = xt[start : start + step], yt[start : start + step]
            logits = _logits(net, xb.unsqueeze(0).expand(k_models, *xb.shape), flip)
            margins.append(margins_from_logits(logits, yb))
            hits_t.append((logits.argmax(-1) == yb).float().sum(1))
        xd, yd = x.to(dev), y.to(dev)
        idx_all = torch.as_tensor(subsets, device=dev)
        for start in range(0, subsets.shape[1], step):
            idx = idx_all[:, start : start + step]
            hits_s.append((_logits(net, gather_rows(xd, idx), flip).argmax(-1) == yd[idx]).float().sum(1))
    margins_np = torch.cat(margins, dim=1).float().cpu().numpy()
    acc_target = (torch.stack(hits_t).sum(0) / len(xt)).cpu().numpy()
    acc_subset = (torch.stack(hits_s).sum(0) / subsets.shape[1]).cpu().numpy()
    return margins_np, acc_target, acc_subset
