"""Moments of row sets of (masks, margins): all the lasso needs of the store, as two types.

Eliminating the unpenalised intercept turns each target's lasso into a problem in
G = Xc^T Xc / m, c = Xc^T yc / m and yy = ||yc||^2 / m, so the solvers never see the
masks, only these. Two forms:

- ``Moments``: centred float64 sums, dense [n, n] (``row_moments``): the reference path's.
- ``CountMoments``: the exact integer counts X^T X of 0/1 masks (float32 holds them
  exactly up to 2^24 rows), the sums, and the centred cross moments X^T (Y - mean Y);
  ``dmflow.lasso.accumulate.count_moments`` streams a store once for the fit and the
  validation rows. They are computed once per store (the ``moments`` rule) and centred
  there once, in float64; every fit job memory-maps them and reads only the rows and
  blocks its solver asks for (``centred_rows``, ``centred_blocks``; float64 ``sxx`` for
  the reference path). ``dmflow.lasso.spectrum`` estimates the ends of their spectrum.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

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
    """The reference path's float64 ``Moments`` of some rows, read in row blocks.

    Two passes (means, then centred products) avoid the cancellation of raw sums; at
    most ``block_rows`` rows are in memory at once, as float64.

    Parameters
    ----------
    masks : bool [m, n]
        Training subsets (may be a memmap).
    targets_y : float [m, T]
        Each row's margin on each target.
    rows : int [k]
        The rows to take, in any order.
    block_rows : int
    device : str
        Where the sums are held.

    Returns
    -------
    Moments
        count k, mean_x [n], mean_y [T], sxx [n, n], sxy [n, T], syy [T] (float64).
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


@dataclass(frozen=True)
class CountMoments:
    """One row set's moments, centred once from exact counts (the fast fit path's input).

    The centred Gram sum Xc^T Xc is the sum of ``grams`` plus the rank-one terms
    ``shifts`` (coef, v): coef v v^T. One row set has one Gram and no shift; ``combine``
    joins fit and validation rows by Chan et al.'s update, S_a + S_b + (m_a m_b / m) dx
    dx^T, so no third [n, n] matrix is ever formed. Every term is already centred (entries
    ~1e-3 of m, no cancellation left), so float32 arithmetic on them loses nothing.
    """

    count: int
    grams: tuple[np.ndarray, ...]  # float32 [n, n] each: a row set's Xc^T Xc (may be memmaps)
    sum_x: np.ndarray  # float64 [n]: column sums of the masks
    mean_y: np.ndarray  # float64 [T]
    cross: np.ndarray  # [T, n], target-major: X^T (Y - mean_y) = the centred cross moments Xc^T Yc
    syy: np.ndarray  # float64 [T]: ||Y - mean_y||^2
    lip: float | None = None  # the largest eigenvalue of Xc^T Xc / count, when known (``top_eigenvalue``)
    mu: float | None = None  # its smallest non-null one, when known (``bottom_eigenvalue``)
    shifts: tuple[tuple[float, np.ndarray], ...] = ()  # rank-one terms (coef, float64 [n]) of the Gram sum

    @property
    def n(self) -> int:
        return len(self.sum_x)

    @property
    def mean_x(self) -> np.ndarray:
        return self.sum_x / self.count

    def _tensors(self) -> list[torch.Tensor]:
        """The Grams as torch tensors sharing their (memory-mapped, read-only) storage."""
        with warnings.catch_warnings():  # torch warns that a read-only memmap is not writable: it is never written
            warnings.simplefilter("ignore", UserWarning)
            return [torch.from_numpy(np.asarray(g)) for g in self.grams]

    def sxx(self, rows: np.ndarray | slice, cols: np.ndarray | slice = slice(None)) -> np.ndarray:
        """float64 [rows, cols] block of Xc^T Xc; only those rows of the (memory-mapped) Grams are read."""
        rows_t = torch.arange(self.n)[rows] if isinstance(rows, slice) else torch.as_tensor(rows)
        cols_t = torch.arange(self.n)[cols] if isinstance(cols, slice) else torch.as_tensor(cols)
        block = self._sum(rows_t, torch.float64)
        return block[:, cols_t].numpy() if len(cols_t) < self.n else block.numpy()

    def _sum(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[len(rows), n]: rows of the centred sum Xc^T Xc in ``dtype``."""
        rows = rows.cpu()
        block = None
        for g in self._tensors():
            part = g.index_select(0, rows).to(dtype)
            block = part if block is None else block.add_(part)
        for coef, v in self.shifts:
            v_t = torch.from_numpy(v).to(dtype)
            block.addr_(v_t[rows], v_t, alpha=coef)
        return block

    def centred_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[len(rows), n]: rows of the centred Gram G = Xc^T Xc / count, in ``dtype``."""
        return self._sum(rows, dtype).div_(self.count)

    def centred_blocks(self, idx: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[t, K, K]: the principal submatrices G[idx_t, idx_t] of the centred Gram, one per row of idx [t, K]
        (features; the value n pads a row and reads 0), in one gather per Gram."""
        at = idx.cpu().clamp(max=self.n - 1)
        rows, cols = at.unsqueeze(2), at.unsqueeze(1)
        out = None
        for g in self._tensors():
            part = g[rows, cols].to(dtype)
            out = part if out is None else out.add_(part)
        for coef, v in self.shifts:
            v_t = torch.from_numpy(v).to(dtype)[at]
            out.add_(v_t.unsqueeze(2) * v_t.unsqueeze(1), alpha=coef)
        keep = (idx.cpu() < self.n).to(dtype)
        return out.div_(self.count).mul_(keep.unsqueeze(2)).mul_(keep.unsqueeze(1))

    def select(self, targets: np.ndarray | slice) -> CountMoments:
        """The same rows, for some targets only (their cross moments read into memory as float64)."""
        return replace(
            self,
            mean_y=self.mean_y[targets],
            cross=np.asarray(self.cross[targets], dtype=np.float64),
            syy=self.syy[targets],
        )

    def combine(self, other: CountMoments, *, lip: float | None = None, mu: float | None = None) -> CountMoments:
        """The moments of the union of two disjoint row sets (Chan et al.'s pairwise update);
        ``lip``, ``mu``: the union's largest and smallest non-null eigenvalues, when known."""
        n = self.count + other.count
        f = self.count * other.count / n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        cross = np.asarray(self.cross, np.float64) + np.asarray(other.cross, np.float64) + f * np.outer(dy, dx)
        return CountMoments(
            n,
            self.grams + other.grams,
            self.sum_x + other.sum_x,
            self.mean_y + dy * other.count / n,
            cross,
            self.syy + other.syy + f * dy * dy,
            lip,
            mu,
            shifts=self.shifts + other.shifts + ((f, dx),),
        )
