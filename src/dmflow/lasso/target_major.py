"""Target-major [n, T] matrices (x.T contiguous: each target's column is one contiguous row in memory), the
layout of every solver's c, weights and products, and the selections of targets and features that keep it."""

from __future__ import annotations

import torch


def target_major(x: torch.Tensor) -> torch.Tensor:
    """The same [n, T] matrix stored target by target (x.T contiguous): the fused solver's layout, so it
    copies c and the warm starts without transposing them, at every lambda."""
    return x.T.contiguous().T


def columns(x: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
    """Columns ``idx`` of a target-major [n, T] matrix, target-major too (a gather of whole rows; a view for a
    slice; ``x`` itself for all columns in order: callers never write to it)."""
    if isinstance(idx, torch.Tensor) and len(idx) == x.shape[1] and _in_order(idx):
        return x
    return x.T[idx].T


def _in_order(idx: torch.Tensor) -> bool:
    """Whether idx is 0, 1, ..., len(idx) - 1."""
    return bool((idx == torch.arange(len(idx), device=idx.device)).all())


def pick(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[width, t]: the rows idx[t] of each target's column of x [n, t]; index n (the padding) reads 0."""
    n = x.shape[0]
    return x.T.gather(1, idx.clamp(max=n - 1)).masked_fill_(idx >= n, 0).T


def set_indices(sets: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [t, K], size [t]): each target's features (column of the mask [n, t]) in increasing order, padded
    with n, and their number."""
    target, feature = torch.nonzero(sets.T.cpu(), as_tuple=True)  # by target, then feature
    counts = torch.bincount(target, minlength=sets.shape[1])
    width = max(1, int(counts.max().item())) if len(counts) else 1
    out = torch.full((sets.shape[1], width), n, dtype=torch.long)
    start = torch.cumsum(counts, 0) - counts
    out[target, torch.arange(len(target)) - start[target]] = feature
    return out.to(sets.device), counts
