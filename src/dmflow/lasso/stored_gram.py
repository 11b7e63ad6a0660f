"""Reading the centred Gram where the moments store it (``CountMoments``: float32 count Grams, memory-mapped,
plus rank-one shifts): products G W, quadratic forms w^T G w, blocks G[A, A], and one dense copy of G; each
reads only the rows it needs."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from dmflow.core.budgets import UNION_BYTES
from dmflow.lasso import working_set_kernels as kernels
from dmflow.lasso.moments import CountMoments
from dmflow.lasso.problem import curvature
from dmflow.lasso.settings import FitSettings
from dmflow.lasso.target_major import columns, pick, set_indices

GATHER_ROWS = 512
"""Rows of a centred Gram in memory at a time (``CentredGram``, ``gram_product``)."""
SPARSE_COST = 3.0
"""The sparse product's cost per non-zero weight, in columns of the dense product (rows x targets): the ratio
of the two products' rates (benchmarks/RESULTS.md, "The lasso package's figures")."""
QUADRATIC_SHARE = 1 / 20
"""A target with at most this share of n non-zero weights gets w^T G w from its support's Gram entries alone."""


class CentredGram:
    """The dense centred Gram G = Xc^T Xc / m of a row set, for the targets whose working sets are dense,
    shared by the target groups' threads: ``get`` returns a matrix M and a factor ``unit`` with G = unit M.

    One row set's stored Gram Xc^T Xc (float32, on the CPU) is M itself, unit = 1/m: read in place from the
    memory-mapped moments, so every fit job of a node shares the page cache's one copy. Else (fit and
    validation rows joined, float64, another device) G is built once, a block of rows at a time, unit = 1.
    """

    def __init__(self, mom: CountMoments, settings: FitSettings) -> None:
        self.mom, self.settings = mom, settings
        self._lock = threading.Lock()
        self._gram: torch.Tensor | None = None
        self.unit = 1.0
        self.bounds = (0.0, 0.0)

    def get(self) -> tuple[torch.Tensor, float, tuple[float, float]]:
        """(M, unit, (L, mu)): G = unit M, and bounds of the spectrum of G + l2 I (the solvers' step lengths)."""
        with self._lock:
            if self._gram is None:
                n, dtype, device = self.mom.n, self.settings.torch_dtype, self.settings.torch_device
                if len(self.mom.grams) == 1 and not self.mom.shifts and dtype == torch.float32 and device == "cpu":
                    gram, self.unit = self.mom._tensors()[0], 1.0 / self.mom.count
                else:
                    gram = torch.empty((n, n), dtype=dtype, device=device)
                    for start in range(0, n, GATHER_ROWS):
                        rows = torch.arange(start, min(start + GATHER_ROWS, n))
                        gram[start : start + len(rows)] = self.mom.centred_rows(rows, dtype)
                l2 = self.settings.l2
                if n <= 4096:
                    lip, mu = curvature(gram.double() * self.unit, 0.0)
                else:
                    lip, mu = self.mom.lip * 1.01, self.mom.mu
                self.bounds = (lip + l2, mu + l2)
                self._gram = gram
            return self._gram, self.unit, self.bounds


def gram_product(mom: CountMoments, w: torch.Tensor, *, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[n, t]: G W, G the centred Gram of ``mom`` [n, n], W = w [n, t] (target-major), in ``dtype`` on ``device``.

    On the CPU in float32, the targets with the fewest non-zeros take the sparse product
    (``kernels.sparse_gram_product``: cost non-zeros x n), the others a dense one over the
    rows where one of their weights is non-zero (``sparse_targets`` splits them).
    """
    n, t = w.shape
    if device != "cpu" or dtype != torch.float32 or len(mom.grams) > 2:
        return dense_gram_product(mom, w, dtype=dtype, device=device)
    nonzero = (w.T != 0).numpy()  # [t, n]: a target's row is contiguous (target-major w)
    sparse = torch.from_numpy(sparse_targets(nonzero))
    if not sparse.any():
        return dense_gram_product(mom, w, dtype=dtype, device=device)
    out = torch.zeros((t, n), dtype=dtype)  # target-major, as the solvers' arrays
    cols = torch.nonzero(sparse).squeeze(1)
    part = np.zeros((len(cols), n), dtype=np.float32)
    w_s = w.T[cols]  # [t_s, n]
    targets, feats = np.nonzero(nonzero[cols.numpy()])
    rows, ptr, order = kernels.group_by_row(feats)
    feats, targets = feats[order], targets[order]
    kernels.sparse_gram_product(*gram_terms(mom)[:3], rows, ptr, targets, w_s.numpy()[targets, feats], part)
    part_t = torch.from_numpy(part)
    for coef, v in mom.shifts:  # the rank-one terms: coef v (v . w)
        v_t = torch.from_numpy(v)
        part_t.add_(torch.outer(w_s.double() @ v_t, v_t).float(), alpha=coef)
    out[cols] = part_t.mul_(1.0 / mom.count)
    if not sparse.all():
        rest = torch.nonzero(~sparse).squeeze(1)
        out[rest] = dense_gram_product(mom, w[:, rest], dtype=dtype, device=device).T
    return out.T


def dense_gram_product(mom: CountMoments, w: torch.Tensor, *, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[n, t]: G W over the rows where some weight of w [n, t] is non-zero, ``GATHER_ROWS`` of G's rows at a time."""
    out = torch.zeros(w.shape, dtype=dtype, device=device)
    support = torch.nonzero((w != 0).any(1)).squeeze(1).cpu()
    for start in range(0, len(support), GATHER_ROWS):
        block = support[start : start + GATHER_ROWS]
        rows = mom.centred_rows(block, dtype).to(device)
        out.addmm_(rows.T, w[block.to(w.device)])
    return out


def gram_quadratic(mom: CountMoments, w: torch.Tensor, *, dtype: torch.dtype, device: str) -> torch.Tensor:
    """float64 [t]: w_t^T G w_t for each column of w [n, t], G the centred Gram of ``mom``.

    On the CPU, a target with at most ``QUADRATIC_SHARE`` of n non-zeros reads G on its
    support only (``kernels.quadratic_forms``: support^2 / 2 entries); the others go
    through G W (``gram_product``: n x support).
    """
    nnz = torch.count_nonzero(w, dim=0)
    small = nnz <= QUADRATIC_SHARE * w.shape[0]
    out = torch.zeros(w.shape[1], dtype=torch.float64, device=w.device)
    if device != "cpu" or len(mom.grams) > 2:
        small[:] = False
    if not small.all():
        rest = torch.nonzero(~small).squeeze(1)
        out[rest] = (w[:, rest].double() * gram_product(mom, w[:, rest], dtype=dtype, device=device).double()).sum(0)
    if small.any():
        cols = torch.nonzero(small).squeeze(1)
        w_s = columns(w, cols).cpu()  # target-major, as w
        idx, _ = set_indices(w_s != 0, w.shape[0])
        quad = np.zeros(len(cols))
        w_set = pick(w_s, idx).T.double().contiguous()
        size = nnz[cols].cpu().numpy().astype(np.int64)
        kernels.quadratic_forms(*gram_terms(mom), idx.numpy(), size, w_set.numpy(), quad)
        out[cols] = torch.from_numpy(quad / mom.count).to(w.device)
    return out


def union_gather(
    mom: CountMoments, sets: torch.Tensor, *, dtype: torch.dtype, device: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function idx [t, K] -> padded Grams G[idx_t, idx_t] [t, K, K], for the working sets of the mask [n, t].

    When the union U of the working sets is small (``UNION_BYTES``), G[U, U] is read once,
    a block of contiguous Gram rows at a time, and the Grams are gathered from it (a
    compact matrix: few cache and TLB misses); else straight from the counts.
    """
    union = torch.nonzero(sets.any(1)).squeeze(1).cpu()
    u, itemsize = len(union), torch.empty((), dtype=dtype).element_size()
    if (u + 1) ** 2 * itemsize > UNION_BYTES:
        return lambda idx: mom.centred_blocks(idx, dtype).to(device)
    sub = torch.zeros((u + 1, u + 1), dtype=dtype)  # the last row and column read 0: the padding
    for start in range(0, u, GATHER_ROWS):
        block = union[start : start + GATHER_ROWS]
        sub[start : start + len(block), :u] = mom.centred_rows(block, dtype)[:, union]
    sub = sub.to(device)
    position = torch.full((mom.n + 1,), u, dtype=torch.long)
    position[union] = torch.arange(u)
    position = position.to(device)

    def gather(idx: torch.Tensor) -> torch.Tensor:
        at = position[idx.to(device)]
        return sub[at.unsqueeze(2), at.unsqueeze(1)]

    return gather


def sparse_targets(nonzero: np.ndarray) -> np.ndarray:
    """bool [t]: the targets (rows of the non-zero mask [t, n]) whose G w the sparse product computes.

    The split by number of non-zeros that minimises ``SPARSE_COST`` x (the sparse targets' non-zeros) +
    (rows in the other targets' supports) x (their number).
    """
    t = nonzero.shape[0]
    if t == 0:
        return np.ones(0, dtype=np.bool_)
    nnz = torch.from_numpy(np.count_nonzero(nonzero, axis=1))
    order = torch.argsort(nnz, descending=True)  # the dense candidates first
    ranked = nonzero[order.numpy()]
    first = ranked.argmax(0)[ranked.any(0)]  # each used feature's first target in that order
    union = torch.from_numpy(np.cumsum(np.bincount(first, minlength=t)))  # rows of the first d + 1 in order
    rest = nnz[order].flip(0).cumsum(0).flip(0)  # non-zeros of targets d, d + 1, ...
    dense_cost = torch.cat([torch.zeros(1), union * torch.arange(1, len(nnz) + 1)]).double()
    sparse_cost = SPARSE_COST * torch.cat([rest, torch.zeros(1, dtype=rest.dtype)]).double()
    d = int(torch.argmin(dense_cost + sparse_cost))
    sparse = np.ones(t, dtype=np.bool_)
    sparse[order[:d].numpy()] = False
    return sparse


def gram_terms(mom: CountMoments) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray, np.ndarray]:
    """The kernels' view of a centred Gram sum: (g1, g2, two, shift_v [k, n], shift_c [k])."""
    grams = [np.asarray(g) for g in mom.grams]
    assert len(grams) <= 2, "a Gram sum of more than two row sets"
    n = mom.n
    shift_v = np.array([v for _, v in mom.shifts], dtype=np.float64).reshape(len(mom.shifts), n)
    shift_c = np.array([coef for coef, _ in mom.shifts], dtype=np.float64)
    return grams[0], grams[-1], len(grams) > 1, shift_v, shift_c
