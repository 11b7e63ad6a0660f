"""Centred moments of row sets of (masks, margins): all the lasso needs of the store.

Eliminating the unpenalised intercept turns each target's lasso into a problem in
G = Xc^T Xc / m, c = Xc^T yc / m and yy = ||yc||^2 / m (``Moments.gram``), so the
solvers never see the masks, only these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Moments:
    """Centred sums of a set of rows: count, means, Xc^T Xc, Xc^T Yc and ||Yc||^2 (float64)."""

    count: int
    mean_x: torch.Tensor  # [n]
    mean_y: torch.Tensor  # [T]
    sxx: torch.Tensor  # [n, n]
    sxy: torch.Tensor  # [n, T]
    syy: torch.Tensor  # [T]

    def combine(self, other: Moments) -> Moments:
        """The moments of the union of two disjoint row sets (Chan et al.'s pairwise update)."""
        n = self.count + other.count
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        f = self.count * other.count / n
        return Moments(
            n,
            self.mean_x + dx * other.count / n,
            self.mean_y + dy * other.count / n,
            self.sxx + other.sxx + f * torch.outer(dx, dx),
            self.sxy + other.sxy + f * torch.outer(dx, dy),
            self.syy + other.syy + f * dy * dy,
        )

    def select(self, targets: torch.Tensor) -> Moments:
        """The same rows, restricted to some targets."""
        return Moments(self.count, self.mean_x, self.mean_y[targets], self.sxx, self.sxy[:, targets], self.syy[targets])

    def gram(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G, c, yy) of the centred problem, per row, in ``dtype``."""
        m = self.count
        return (self.sxx / m).to(dtype), (self.sxy / m).to(dtype), (self.syy / m).to(dtype)


def row_moments(
    masks: np.ndarray,
    targets_y: np.ndarray,
    rows: np.ndarray,
    *,
    block_rows: int = 4096,
    device: str = "cpu",
) -> Moments:
    """Moments of ``rows`` of (masks [m, n], targets_y [m, T]), read in row blocks (masks may be a memmap).

    Two passes (means, then centred products) avoid the cancellation of raw sums; at
    most ``block_rows`` rows are in memory at once, as float64.
    """
    rows = np.sort(np.asarray(rows))
    n, t = masks.shape[1], targets_y.shape[1]
    f64 = dict(dtype=torch.float64, device=device)
    sum_x, sum_y = torch.zeros(n, **f64), torch.zeros(t, **f64)
    for start in range(0, len(rows), block_rows):
        r = rows[start : start + block_rows]
        sum_x += torch.as_tensor(masks[r], **f64).sum(0)
        sum_y += torch.as_tensor(targets_y[r], **f64).sum(0)
    m = len(rows)
    mean_x, mean_y = sum_x / m, sum_y / m
    sxx, sxy, syy = torch.zeros(n, n, **f64), torch.zeros(n, t, **f64), torch.zeros(t, **f64)
    for start in range(0, len(rows), block_rows):
        r = rows[start : start + block_rows]
        xb = torch.as_tensor(masks[r], **f64) - mean_x
        yb = torch.as_tensor(targets_y[r], **f64) - mean_y
        sxx += xb.T @ xb
        sxy += xb.T @ yb
        syy += (yb * yb).sum(0)
    return Moments(m, mean_x, mean_y, sxx, sxy, syy)
