"""One lasso datamodel per target: the lambda path, the choice of lambda, the refit.

For the targets of a block: split the store's usable rows into fit and validation
rows, run a lambda path on the fit rows (warm starts), pick per target the lambda
with the lowest validation MSE, refit at that lambda on fit + validation rows, and
record the path statistics. Only centred moments of the rows are ever built
(``dmflow.lasso.moments``), never a dense float copy of all masks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import numpy as np
import torch

from dmflow.core.codes import FLAG_CONSTANT, FLAG_NOT_CONVERGED, FLAG_OK
from dmflow.core.device import resolve_device
from dmflow.core.progress import Progress
from dmflow.core.schema import defaults
from dmflow.core.seeds import PURPOSE_VALIDATION_ROWS, alpha_key
from dmflow.lasso import kernels
from dmflow.lasso.cvxpy_solver import solve_cvxpy
from dmflow.lasso.moments import CountMoments, Moments, bottom_eigenvalue, row_moments, top_eigenvalue
from dmflow.lasso.problem import GREEDY_STEP, curvature, lambda_max, mse_from_moments
from dmflow.lasso.solvers import solve_batched
from dmflow.lasso.torch_solver import PaddedGrams, proximal_loop

R = TypeVar("R")
_FIT = defaults("fit")


@dataclass(frozen=True)
class FitSettings:
    """What a fit needs of the config's ``fit`` section (keys as in docs/configuration.md).

    ``targets_per_job`` and ``threads`` decide how the work is cut, not the result, and are not here.
    """

    solver: str = _FIT["solver"]
    val_fraction: float = _FIT["val_fraction"]
    num_lambdas: int = _FIT["num_lambdas"]
    lambda_min_ratio: float = _FIT["lambda_min_ratio"]
    tol: float = _FIT["tol"]
    max_iter: int = _FIT["max_iter"]
    dtype: str = _FIT["dtype"]
    nonneg: bool = _FIT["nonneg"]
    l2: float = _FIT["l2"]
    cvxpy_solver: str = _FIT["cvxpy_solver"]
    device: str = _FIT["device"]
    patience: int = _FIT["patience"]

    @classmethod
    def from_config(cls, fit: dict) -> FitSettings:
        """From the config section (validated or partial: missing keys take the schema's defaults)."""
        return cls(**{k: fit[k] for k in cls.__dataclass_fields__ if k in fit})

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    @property
    def torch_device(self) -> str:
        return resolve_device(self.device, "fit.device")


def lambda_path(lam_max: torch.Tensor, num: int, min_ratio: float) -> torch.Tensor:
    """[num, T] geometric grid from lam_max down to lam_max * min_ratio."""
    if num == 1:
        return lam_max.unsqueeze(0).clone()
    exponents = torch.linspace(0, 1, num, dtype=lam_max.dtype, device=lam_max.device)
    return lam_max.unsqueeze(0) * (min_ratio**exponents).unsqueeze(1)


def path_warm_start(
    w_prev: torch.Tensor, w: torch.Tensor, *, lam_prev: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor
) -> torch.Tensor:
    """[n, T]: the start for lam_next on the line through the solutions w_prev (at lam_prev) and w (at lam).

    While the support and signs stay fixed the lasso solution is affine in lam, so
    this is exact there and much closer than ``w`` elsewhere: fewer iterations for
    the same KKT stopping rule (the solution itself does not depend on the start).
    """
    step = lam - lam_prev
    ratio = torch.where(step != 0, (lam_next - lam) / torch.where(step != 0, step, 1), 0)
    return torch.lerp(w, w_prev, -ratio)  # w + ratio (w - w_prev) in one pass


def split_validation_rows(
    rows: np.ndarray, val_fraction: float, *, seed: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically divide ``rows`` into (fit rows, validation rows), both sorted int64.

    ``round(val_fraction * len(rows))`` rows (at least one) are drawn for validation
    from the seed key (seed, alpha, ``PURPOSE_VALIDATION_ROWS``).
    """
    rng = np.random.default_rng(np.random.SeedSequence((seed, alpha_key(alpha), PURPOSE_VALIDATION_ROWS)))
    order = rng.permutation(len(rows))
    n_val = max(1, int(round(val_fraction * len(rows))))
    return np.sort(rows[order[n_val:]]), np.sort(rows[order[:n_val]])


def validation_mse(
    val: Moments, w: torch.Tensor, *, fit_mean_x: torch.Tensor, fit_mean_y: torch.Tensor
) -> torch.Tensor:
    """float64 [T]: per-target MSE on the validation rows of weights w [n, T] fitted on other rows.

    With b = fit_mean_y - fit_mean_x . w, the residual on a validation row splits into
    a centred part (from the validation moments) and a constant offset.
    """
    w64 = w.double()
    quad = (w64 * (val.sxx @ w64)).sum(0) - 2 * (val.sxy * w64).sum(0) + val.syy
    offset = (val.mean_y - fit_mean_y) - (val.mean_x - fit_mean_x) @ w64
    return quad / val.count + offset**2


def _constant_targets(moments: Moments) -> torch.Tensor:
    """Targets whose margins do not vary over the rows (up to rounding)."""
    return moments.syy <= 1e-20 * moments.count * (1 + moments.mean_y**2)


def _solve(
    gram, c, lam, w0, bounds, settings: FitSettings, gram_w0: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One lambda per target -> (weights, converged, G @ weights), with the configured solver.

    ``gram_w0`` (G @ w0, when known) spares the batched solver its first matrix product.
    """
    if settings.solver == "cvxpy":
        w = solve_cvxpy(
            gram.double().cpu().numpy(),
            c.double().cpu().numpy(),
            lam.double().cpu().numpy()[None],
            l2=settings.l2,
            nonneg=settings.nonneg,
            solver=settings.cvxpy_solver,
        )[0]
        w = torch.as_tensor(w, dtype=c.dtype, device=c.device)
        return w, torch.ones(c.shape[1], dtype=torch.bool), gram @ w
    lip, mu = bounds
    res = solve_batched(
        gram,
        c,
        lam,
        w0=w0,
        l2=settings.l2,
        nonneg=settings.nonneg,
        tol=settings.tol,
        max_iter=settings.max_iter,
        lip=lip,
        mu=mu,
        gram_w0=gram_w0,
    )
    return res.weight, res.converged.cpu(), res.gram_weight


def _target_major(x: torch.Tensor) -> torch.Tensor:
    """The same [n, T] matrix stored target by target (x.T contiguous): the fused solver's layout, so it
    copies c and the warm starts without transposing them, at every lambda."""
    return x.T.contiguous().T


def _columns(x: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
    """Columns ``idx`` of a target-major [n, T] matrix, target-major too (a gather of whole rows; a view for a
    slice; ``x`` itself for all columns in order: callers never write to it)."""
    if isinstance(idx, torch.Tensor) and len(idx) == x.shape[1] and _in_order(idx):
        return x
    return x.T[idx].T


def _in_order(idx: torch.Tensor) -> bool:
    """Whether idx is 0, 1, ..., len(idx) - 1."""
    return bool((idx == torch.arange(len(idx), device=idx.device)).all())


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (features) of a target-major [n, T] matrix, target-major too."""
    return x.T[:, idx].T


class _Problem(Protocol):
    """What the lambda path needs of a lasso problem over some targets (``_fit_path``)."""

    def solve(
        self, targets: torch.Tensor, c: torch.Tensor, lam: torch.Tensor, w0: torch.Tensor, gram_w0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One lambda per target (``targets`` index the problem's) -> (weights [n, t], converged [t], G @ weights)."""
        ...

    def val_mse(self, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """float64 [t]: the validation MSE of weights w [n, t] of some of the problem's targets."""
        ...


@dataclass
class _Dense:
    """The reference: every solve over all features of a dense centred Gram."""

    gram: torch.Tensor
    bounds: tuple[float, float]
    settings: FitSettings
    fit_m: Moments
    val_m: Moments

    def solve(self, targets, c, lam, w0, gram_w0):
        return _solve(self.gram, c, lam, w0, self.bounds, self.settings, gram_w0)

    def val_mse(self, targets, w):
        return validation_mse(
            self.val_m.select(targets), w, fit_mean_x=self.fit_m.mean_x, fit_mean_y=self.fit_m.mean_y[targets]
        )


GATHER_ROWS = 512
"""Rows of a centred Gram in memory at a time (``CentredGram``, ``_ActiveSet._product``)."""
BUCKET_BYTES = 128 * 2**20
"""Memory of one batch of padded per-target Grams: targets are solved in batches of similar working-set size."""
UNION_BYTES = 512 * 2**20
"""Up to this size G[U, U] (U: the union of a solve's working sets) is read once and the Grams gathered from it."""
COORDINATE_DESCENT = True
"""On the CPU, working sets are solved by coordinate descent (``kernels.working_set_cd``): measured on an n = 8000
block of 400 targets, 1.8x faster than the padded proximal solver and 1 GB less memory (benchmarks/RESULTS.md)."""
CD_BUFFER_ENTRIES = 2**24
"""float32 entries of the copies G[A_t, A_t] that coordinate descent holds at once (64 MB), for a batch of targets
whose Gram rows are read once for all of them; a set beyond 4096 features reads its Gram rows in place."""
MAX_ROUNDS = 50
DENSE_SHARE = 0.25
"""A target whose working set holds more than this share of the features is solved on the dense Gram."""
DENSE_MAX_N = 5000
"""Up to this many features ``fit_from_moments`` solves on the dense centred Gram: measured on one block of
400 targets (benchmarks/RESULTS.md), dense took 14 s and working sets 24 s at n = 4000, working sets won by
~2x at n = 8000."""


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


class _ActiveSet:
    """A lasso on ``CountMoments`` whose cost follows each target's active set, not n^2.

    Every target has its own working set A_t: its support at the warm start, the
    features ever non-zero along its path, and every feature that passes the sequential
    strong rule, |g_j| >= (2 - 1/r) lambda, r the path's ratio (glmnet's strong set). A
    solve runs a per-target solver on G[A_t, A_t] (on the CPU, coordinate descent on each
    target's copy of it, ``kernels.working_set_cd``; elsewhere the batched proximal solver
    on padded Grams, ``_solve_sets_padded``), then checks the KKT conditions of every
    feature with one product G W over the rows where some weight is non-zero; a target
    with violations adds them to its working set, and the solve repeats (one round
    mostly settles it). The Grams are read where they are stored (memory-mapped), already centred.
    The solution meets the same KKT tolerance on all features as the reference's, so the
    two agree to the solver's tolerance.
    """

    def __init__(self, mom: CountMoments, val: CountMoments | None, settings: FitSettings, dense: CentredGram) -> None:
        self.mom, self.val, self.settings, self.dense = mom, val, settings, dense
        self.dtype, self.device = settings.torch_dtype, settings.torch_device
        self.ever = torch.zeros((len(mom.mean_y), mom.n), dtype=torch.bool, device=self.device)  # [T, n]
        ratio = settings.lambda_min_ratio ** (1 / max(settings.num_lambdas - 1, 1))
        self.strong = max(0.0, 2 - 1 / ratio)

    def _product(self, w: torch.Tensor, mom: CountMoments | None = None) -> torch.Tensor:
        """[n, t]: G W (G of ``mom``, the problem's rows by default). On the CPU in float32, the targets with the
        fewest non-zeros take the sparse product (``kernels.sparse_gram_product``: cost non-zeros x n), the others
        a dense one over the rows where one of their weights is non-zero (``_sparse_targets`` splits them)."""
        mom = mom or self.mom
        n, t = w.shape
        if self.device != "cpu" or self.dtype != torch.float32 or len(mom.grams) > 2:
            return self._dense_product(w, mom)
        nonzero = (w.T != 0).numpy()  # [t, n]: a target's row is contiguous (target-major w)
        sparse = torch.from_numpy(_sparse_targets(nonzero))
        if not sparse.any():
            return self._dense_product(w, mom)
        out = torch.zeros((t, n), dtype=self.dtype)  # target-major, as the solvers' arrays
        cols = torch.nonzero(sparse).squeeze(1)
        part = np.zeros((len(cols), n), dtype=np.float32)
        w_s = w.T[cols]  # [t_s, n]
        targets, feats = np.nonzero(nonzero[cols.numpy()])
        rows, ptr, order = kernels.group_by_row(feats)
        feats, targets = feats[order], targets[order]
        kernels.sparse_gram_product(*_gram_terms(mom)[:3], rows, ptr, targets, w_s.numpy()[targets, feats], part)
        part_t = torch.from_numpy(part)
        for coef, v in mom.shifts:  # the rank-one terms: coef v (v . w)
            v_t = torch.from_numpy(v)
            part_t.add_(torch.outer(w_s.double() @ v_t, v_t).float(), alpha=coef)
        out[cols] = part_t.mul_(1.0 / mom.count)
        if not sparse.all():
            rest = torch.nonzero(~sparse).squeeze(1)
            out[rest] = self._dense_product(w[:, rest], mom).T
        return out.T

    def _dense_product(self, w: torch.Tensor, mom: CountMoments) -> torch.Tensor:
        """[n, t]: G W over the rows where some weight is non-zero, ``GATHER_ROWS`` of G's rows at a time."""
        out = torch.zeros(w.shape, dtype=self.dtype, device=self.device)
        support = torch.nonzero((w != 0).any(1)).squeeze(1).cpu()
        for start in range(0, len(support), GATHER_ROWS):
            block = support[start : start + GATHER_ROWS]
            rows = mom.centred_rows(block, self.dtype).to(self.device)
            out.addmm_(rows.T, w[block.to(w.device)])
        return out

    def _union_gather(self, sets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function idx [t, K] -> padded Grams [t, K, K]. When the union U of the working sets is small
        (``UNION_BYTES``), G[U, U] is read once, a block of contiguous Gram rows at a time, and the Grams are
        gathered from it (a compact matrix: few cache and TLB misses); else straight from the counts."""
        union = torch.nonzero(sets.any(1)).squeeze(1).cpu()
        u, itemsize = len(union), torch.empty((), dtype=self.dtype).element_size()
        if (u + 1) ** 2 * itemsize > UNION_BYTES:
            return lambda idx: self.mom.centred_blocks(idx, self.dtype).to(self.device)
        sub = torch.zeros((u + 1, u + 1), dtype=self.dtype)  # the last row and column read 0: the padding
        for start in range(0, u, GATHER_ROWS):
            block = union[start : start + GATHER_ROWS]
            sub[start : start + len(block), :u] = self.mom.centred_rows(block, self.dtype)[:, union]
        sub = sub.to(self.device)
        position = torch.full((self.mom.n + 1,), u, dtype=torch.long)
        position[union] = torch.arange(u)
        position = position.to(self.device)

        def gather(idx: torch.Tensor) -> torch.Tensor:
            at = position[idx.to(self.device)]
            return sub[at.unsqueeze(2), at.unsqueeze(1)]

        return gather

    def _buckets(self, sets: torch.Tensor) -> list[torch.Tensor]:
        """Targets (columns of the [n, t] working-set mask) in batches of similar set size, each batch's padded
        Grams within ``BUCKET_BYTES``."""
        sizes = torch.count_nonzero(sets, dim=0).cpu().numpy()
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        buckets, current = [], []
        for k in np.argsort(sizes, kind="stable"):  # increasing size: the last one sets the padding
            if current and (len(current) + 1) * max(int(sizes[k]), 1) ** 2 * itemsize > BUCKET_BYTES:
                buckets.append(torch.as_tensor(current))
                current = []
            current.append(int(k))
        return [*buckets, torch.as_tensor(current)] if current else buckets

    def _solve_sets(self, c, lam, w, gw, scale, sets):
        """The per-target solves on fixed working sets (mask [n, t]) -> (weights [n, t], converged [t]).

        On the CPU, coordinate descent reading the Gram in place (``working_set_cd``); elsewhere
        ``_solve_sets_padded``. Both stop at the same KKT tolerance on the set.
        """
        if self.device != "cpu" or not COORDINATE_DESCENT:
            return self._solve_sets_padded(c, lam, w, gw, scale, sets)
        s, n = self.settings, c.shape[0]
        idx, size = _set_indices(sets, n)
        size = size.numpy().astype(np.int64)
        w_set = _pick(w, idx).T.double().contiguous()
        grad = (_pick(gw, idx) - _pick(c, idx)).T.double().contiguous()
        converged, epochs = np.zeros(len(size), dtype=np.bool_), np.zeros(len(size), dtype=np.int64)
        terms, idx_np, w_np, grad_np = _gram_terms(self.mom), idx.numpy(), w_set.numpy(), grad.numpy()
        lam_np, tol_np = lam.double().numpy(), (s.tol * scale).double().numpy()
        buf = np.empty(max(1, min(int((size**2).sum()), CD_BUFFER_ENTRIES)), dtype=np.float32)
        for batch in _copy_batches(size, CD_BUFFER_ENTRIES):  # targets whose copies fit in buf together
            held = size[batch] ** 2 <= CD_BUFFER_ENTRIES
            offset = np.where(held, np.cumsum(np.where(held, size[batch] ** 2, 0)) - size[batch] ** 2, -1)
            kernels.working_set_cd(
                *terms,
                1.0 / self.mom.count,
                idx_np[batch],
                size[batch],
                w_np[batch],
                grad_np[batch],
                lam_np[batch],
                tol_np[batch],
                float(s.l2),
                bool(s.nonneg),
                int(s.max_iter),
                converged[batch],
                epochs[batch],
                buf,
                offset,
                *kernels.copy_plan(idx_np[batch], size[batch], held),
            )
        out = torch.zeros((len(size), n + 1), dtype=c.dtype).scatter_(1, idx, w_set.to(c.dtype))
        return out[:, :n].T, torch.from_numpy(converged)

    def _solve_sets_padded(self, c, lam, w, gw, scale, sets):
        """``_solve_sets`` as batched proximal gradient (any device): per bucket of targets, the padded Grams
        G[A_t, A_t] gathered from the counts, then ``proximal_loop`` on them."""
        s, (n, t) = self.settings, c.shape
        out = torch.zeros((t, n + 1), dtype=c.dtype, device=c.device)
        converged = torch.ones(t, dtype=torch.bool)
        gather = self._union_gather(sets)
        for bucket in self._buckets(sets):
            cols = bucket.to(c.device)
            idx, _ = _set_indices(sets[:, bucket.to(sets.device)], n)
            grams = gather(idx)
            lip = _step_bounds(grams, self.mom.lip, s.l2)
            res = proximal_loop(
                PaddedGrams(grams),
                _pick(c[:, cols], idx),
                lam[cols],
                w0=_pick(w[:, cols], idx),
                l2=s.l2,
                nonneg=s.nonneg,
                tol=s.tol,
                scale=scale[cols],
                max_iter=s.max_iter,
                steps=(1.0 / lip, GREEDY_STEP / lip, 1.0 / lip),
                gram_w0=_pick(gw[:, cols], idx),
            )
            out[cols] = out.new_zeros((len(cols), n + 1)).scatter_(1, idx, res.weight.T)
            converged[bucket] = res.converged.cpu()
        return out[:, :n].T, converged

    def solve(self, targets, c, lam, w0, gram_w0):
        s = self.settings
        scale = lambda_max(c, s.nonneg)  # the tolerance's unit: all features' lambda_max, as in the reference
        ever = self.ever[targets.to(self.device)].T | (w0 != 0)  # [n, t], target-major as w0
        if gram_w0 is None:
            gram_w0 = self._product(w0)
        grad = gram_w0 - c + s.l2 * w0 if s.l2 else gram_w0 - c
        sets = ever | (grad.abs() >= self.strong * lam)  # glmnet's strong set: one round of solves, mostly
        dense = torch.count_nonzero(sets, dim=0) > DENSE_SHARE * c.shape[0]
        if dense.any():  # these targets' working sets are nearly everything: one shared Gram, all features
            w, converged, gw = self._solve_dense(targets, c, lam, w0, gram_w0, scale, dense)
            if dense.all():
                return w, converged, gw
            keep = torch.nonzero(~dense).squeeze(1)
            w_s, conv_s, gw_s = self._solve_sparse(
                targets[keep.to(targets.device)],
                c[:, keep],
                lam[keep],
                w0[:, keep],
                gram_w0[:, keep],
                scale[keep],
                sets[:, keep],
            )
            w[:, keep], gw[:, keep], converged[keep.cpu()] = w_s, gw_s, conv_s
            return w, converged, gw
        return self._solve_sparse(targets, c, lam, w0, gram_w0, scale, sets)

    def _solve_dense(self, targets, c, lam, w0, gram_w0, scale, dense):
        s = self.settings
        gram, unit, (lip, mu) = self.dense.get()  # G = unit gram: the objective over unit has the same minimiser
        cols = torch.nonzero(dense).squeeze(1)
        res = solve_batched(
            gram,
            _columns(c, cols) / unit,
            lam[cols] / unit,
            w0=_columns(w0, cols),
            gram_w0=_columns(gram_w0, cols) / unit,
            l2=s.l2 / unit,
            nonneg=s.nonneg,
            tol=s.tol,
            max_iter=s.max_iter,
            lip=lip / unit,
            mu=mu / unit,
            scale=scale[cols] / unit,
        )
        w, gw = torch.zeros_like(c), torch.zeros_like(c)
        w[:, cols], gw[:, cols] = res.weight, res.gram_weight * unit
        converged = torch.ones(c.shape[1], dtype=torch.bool)
        converged[cols.cpu()] = res.converged.cpu()
        self.ever[targets[cols.to(targets.device)].to(self.device)] |= (res.weight != 0).T
        return w, converged, gw

    def _solve_sparse(self, targets, c, lam, w0, gram_w0, scale, sets):
        """Rounds of working-set solves and KKT checks; a round re-solves only the targets whose check failed."""
        s = self.settings
        ever = self.ever[targets.to(self.device)].T | (w0 != 0)
        w, gw = w0.clone(), gram_w0.clone()
        converged = torch.ones(c.shape[1], dtype=torch.bool)
        todo = torch.arange(c.shape[1], device=c.device)
        for _ in range(MAX_ROUNDS):
            w_t, conv_t = self._solve_sets(
                _columns(c, todo), lam[todo], _columns(w, todo), _columns(gw, todo), scale[todo], sets[:, todo]
            )
            gw_t = self._product(w_t)
            w[:, todo], gw[:, todo], converged[todo.cpu()] = w_t, gw_t, conv_t
            grad = gw_t - _columns(c, todo) + s.l2 * w_t if s.l2 else gw_t - _columns(c, todo)
            lam_t, sets_t = lam[todo], sets[:, todo]
            violation = ((-grad - lam_t) if s.nonneg else (grad.abs() - lam_t)) > s.tol * scale[todo]
            bad = violation & ~sets_t
            again = bad.any(0)
            if not again.any():
                break
            sets[:, todo[again]] = (sets_t | bad)[:, again]
            todo = todo[again]
        else:  # pragma: no cover - working sets that never settle
            converged[todo.cpu()] = False
        self.ever[targets.to(self.device)] = (ever | (w != 0)).T
        return w, converged, gw

    def val_mse(self, targets, w):
        fit, val, t = self.mom, self.val, targets.cpu().numpy()
        w64 = w.double()
        quad = self._quadratic(w, val)  # w^T G_val w, G_val = Xc^T Xc / m_val
        cross = torch.from_numpy(np.asarray(val.cross)[t]).to(w.device)  # [t, n]
        dx = torch.from_numpy(val.mean_x - fit.mean_x).to(w.device)
        offset = torch.from_numpy(val.mean_y[t] - fit.mean_y[t]).to(w.device) - dx @ w64
        syy = torch.from_numpy(val.syy[t]).to(w.device)
        return (quad + (syy - 2 * (cross.T * w64).sum(0)) / val.count + offset**2).cpu()

    def _quadratic(self, w: torch.Tensor, mom: CountMoments) -> torch.Tensor:
        """float64 [t]: w_t^T G w_t for each column of w [n, t]. On the CPU, a target with at most
        ``QUADRATIC_SHARE`` of n non-zeros reads G on its support only (``kernels.quadratic_forms``: support^2 / 2
        entries); the others go through G W (``_product``: n x support)."""
        nnz = torch.count_nonzero(w, dim=0)
        small = nnz <= QUADRATIC_SHARE * w.shape[0]
        out = torch.zeros(w.shape[1], dtype=torch.float64, device=w.device)
        if self.device != "cpu" or len(mom.grams) > 2:
            small[:] = False
        if not small.all():
            rest = torch.nonzero(~small).squeeze(1)
            out[rest] = (w[:, rest].double() * self._product(w[:, rest], mom).double()).sum(0)
        if small.any():
            cols = torch.nonzero(small).squeeze(1)
            w_s = _columns(w, cols).cpu()  # target-major, as w
            idx, _ = _set_indices(w_s != 0, w.shape[0])
            quad = np.zeros(len(cols))
            w_set = _pick(w_s, idx).T.double().contiguous()
            size = nnz[cols].cpu().numpy().astype(np.int64)
            kernels.quadratic_forms(*_gram_terms(mom), idx.numpy(), size, w_set.numpy(), quad)
            out[cols] = torch.from_numpy(quad / mom.count).to(w.device)
        return out


SPARSE_COST = 3.0
"""The sparse product's cost per non-zero weight, in columns of the dense product (rows x targets): at n = 8000 the
sparse one ran at ~15 GFLOP/s, the dense one over 4300 rows at ~46."""


def _sparse_targets(nonzero: np.ndarray) -> np.ndarray:
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


QUADRATIC_SHARE = 1 / 20
"""A target with at most this share of n non-zero weights gets w^T G w from its support's Gram entries alone."""


def _gram_terms(mom: CountMoments) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray, np.ndarray]:
    """The kernels' view of a centred Gram sum: (g1, g2, two, shift_v [k, n], shift_c [k])."""
    grams = [np.asarray(g) for g in mom.grams]
    assert len(grams) <= 2, "a Gram sum of more than two row sets"
    n = mom.n
    shift_v = np.array([v for _, v in mom.shifts], dtype=np.float64).reshape(len(mom.shifts), n)
    shift_c = np.array([coef for coef, _ in mom.shifts], dtype=np.float64)
    return grams[0], grams[-1], len(grams) > 1, shift_v, shift_c


def _copy_batches(size: np.ndarray, budget: int) -> list[slice]:
    """Consecutive targets whose copies G[A_t, A_t] (size^2 entries each) fit in ``budget`` entries together; a
    target beyond it alone (it reads the Gram in place)."""
    batches, start, used = [], 0, 0
    for i, k2 in enumerate(size.astype(np.int64) ** 2):
        if i > start and used + k2 > budget:
            batches.append(slice(start, i))
            start, used = i, 0
        used += k2
    return [*batches, slice(start, len(size))] if len(size) else batches


def _set_indices(sets: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [t, K], size [t]): each target's features (column of the mask [n, t]) in increasing order, padded
    with n, and their number."""
    target, feature = torch.nonzero(sets.T.cpu(), as_tuple=True)  # by target, then feature
    counts = torch.bincount(target, minlength=sets.shape[1])
    width = max(1, int(counts.max().item())) if len(counts) else 1
    out = torch.full((sets.shape[1], width), n, dtype=torch.long)
    start = torch.cumsum(counts, 0) - counts
    out[target, torch.arange(len(target)) - start[target]] = feature
    return out.to(sets.device), counts


def _step_bounds(grams: torch.Tensor, lip: float, l2: float) -> torch.Tensor:
    """L [t]: a step bound for each padded Gram G[A_t, A_t] [t, K, K]: the smaller of the row set's top
    eigenvalue ``lip`` (a bound for every principal submatrix, by Cauchy's interlacing theorem) and the
    Gershgorin bound max_i sum_j |G_ij| (tighter for small working sets), + ``l2``."""
    gershgorin = torch.linalg.matrix_norm(grams, ord=float("inf"))  # max_i sum_j |G_ij|
    return torch.clamp(gershgorin, max=lip * 1.01).clamp(min=1e-12) + l2


def _pick(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[width, t]: the rows idx[t] of each target's column of x [n, t]; index n (the padding) reads 0."""
    n = x.shape[0]
    return x.T.gather(1, idx.clamp(max=n - 1)).masked_fill_(idx >= n, 0).T


def _constant(moments: CountMoments) -> np.ndarray:
    """Targets whose margins do not vary over the rows (up to rounding): the rule of ``_constant_targets``."""
    return moments.syy <= 1e-20 * moments.count * (1 + moments.mean_y**2)


def fit_from_moments(
    fit: CountMoments,
    val: CountMoments,
    *,
    settings: FitSettings,
    workers: int = 0,
    method: str = "auto",
    all_rows_lip: float | None = None,
    all_rows_mu: float | None = None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """``fit_targets``' datamodels, from the moments of the fit and validation rows, with working sets.

    Parameters
    ----------
    fit, val : CountMoments
        The fit rows' and the validation rows' moments, for the targets to fit (``select``);
        their Grams may be memory-mapped: only the rows of the working sets are read.
    settings : FitSettings
        With ``solver: cvxpy`` the dense reference path runs on the same moments.
    workers : int
        Target groups run side by side, as in ``fit_targets``.
    method : {"auto", "active", "dense"}
        ``active``: per-target working sets (cost follows the supports; the Grams are read
        a row block at a time). ``dense``: the reference path on the dense centred Gram
        (n^2 in memory; GEMMs over all features). ``auto``: dense up to ``DENSE_MAX_N``
        features, where it is the faster, active beyond.
    all_rows_lip, all_rows_mu : float, optional
        The largest and smallest non-null eigenvalues of the centred Gram of fit and
        validation rows together (the refit's step lengths; ``top_eigenvalue``,
        ``bottom_eigenvalue``), when known; ``fit.lip`` and ``fit.mu`` likewise. The
        ``moments`` stage stores them; missing ones are computed (Lanczos, a few passes
        over the Grams).
    progress : Progress, optional
        Counted in targets: advanced along each target group's lambda path and refit.

    Returns
    -------
    dict
        The arrays ``fit_targets`` returns, equal to its up to the solver's tolerance
        (``tests/test_fit.py`` holds the two paths to it).
    """
    if method not in ("auto", "active", "dense"):
        raise ValueError(f"method={method!r} is not one of auto, active, dense")
    if settings.solver != "batched" or method == "dense" or (method == "auto" and fit.n <= DENSE_MAX_N):
        return _fit_dense(
            _dense_moments(fit, settings),
            _dense_moments(val, settings),
            settings=settings,
            workers=workers or 1,
            progress=progress,
        )
    device, dtype = settings.torch_device, settings.torch_dtype
    fit, every = _with_spectrum(fit), _with_spectrum(fit.combine(val, lip=all_rows_lip, mu=all_rows_mu))
    constant = _constant(fit) | _constant(every)

    def target_major(mom: CountMoments) -> torch.Tensor:
        c = torch.from_numpy(np.asarray(mom.cross, np.float64) / mom.count).to(device=device, dtype=dtype)
        c[torch.from_numpy(constant)] = 0  # lam_max 0: solved by w = 0 at once
        return c.T  # [n, T], each target's column contiguous

    c, c_all = target_major(fit), target_major(every)
    yy = torch.from_numpy(fit.syy / fit.count).to(device=device, dtype=dtype)
    path = lambda_path(lambda_max(c, settings.nonneg), settings.num_lambdas, settings.lambda_min_ratio)
    if workers == 0:
        workers = group_count(c.shape[1], c.shape[0], torch.get_num_threads()) if device == "cpu" else 1

    dense_fit, dense_all = CentredGram(fit, settings), CentredGram(every, settings)

    def fit_group(g: slice) -> dict[str, torch.Tensor]:
        problem = _ActiveSet(fit.select(g), val.select(g), settings, dense_fit)
        path_g = _fit_path(problem, _columns(c, g), yy[g], path[:, g], settings, progress)
        best_w = path_g.pop("best_w")  # the refit on all rows starts there
        refit = _ActiveSet(every.select(g), None, settings, dense_all)
        weight, conv, _ = refit.solve(torch.arange(g.stop - g.start), _columns(c_all, g), path_g["lam"], best_w, None)
        if progress is not None:
            progress.advance((g.stop - g.start) / (settings.num_lambdas + 1))
        return {**path_g, "weight": weight, "converged": path_g["converged"] & conv}

    parts = over_target_groups(fit_group, c.shape[1], workers)

    def bias_of(weight: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(every.mean_y - every.mean_x @ weight.double().cpu().numpy())

    return _result(parts, path, torch.from_numpy(constant), bias_of, num_fit_rows=fit.count, num_val_rows=val.count)


def _with_spectrum(mom: CountMoments) -> CountMoments:
    """``mom`` with its largest and smallest non-null eigenvalues (``lip``, ``mu``), computed where missing."""
    lip = mom.lip if mom.lip is not None else top_eigenvalue(mom)
    return replace(mom, lip=lip, mu=mom.mu if mom.mu is not None else bottom_eigenvalue(mom, lip))


def _dense_moments(mom: CountMoments, settings: FitSettings) -> Moments:
    """The reference's float64 ``Moments`` from counts (a dense [n, n] Gram: small problems only)."""
    f64 = {"dtype": torch.float64, "device": settings.torch_device}
    return Moments(
        mom.count,
        torch.as_tensor(mom.mean_x, **f64),
        torch.as_tensor(mom.mean_y, **f64),
        torch.as_tensor(mom.sxx(slice(None)), **f64),
        torch.as_tensor(np.asarray(mom.cross).T, **f64),
        torch.as_tensor(mom.syy, **f64),
    )


# Below this many targets x features^2 per group, two groups side by side were no faster
# than one: the groups' Python bookkeeping takes turns on the interpreter lock
# (benchmarks/lasso_solvers.py; RESULTS.md).
MIN_GROUP_WORK = 2e8


def group_count(num_targets: int, num_features: int, threads: int) -> int:
    """How many target groups ``fit_targets`` runs side by side: one per thread, each of at least ``MIN_GROUP_WORK``."""
    return max(1, min(threads, int(num_targets * num_features**2 // MIN_GROUP_WORK)))


def over_target_groups(fn: Callable[[slice], R], num_targets: int, workers: int) -> list[R]:
    """``fn`` on ``workers`` contiguous groups of the targets at once, one Python thread each, torch on one thread.

    Targets are independent, so each group can run its whole lambda path alone. Within
    one solve the matrix product keeps every thread busy, but the fused kernel and the
    bookkeeping between products run on one; whole groups side by side keep every core
    busy all the time (benchmarks/lasso_solvers.py times both).
    """
    edges = np.linspace(0, num_targets, max(1, min(workers, num_targets)) + 1).round().astype(int)
    groups = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    if len(groups) == 1:
        return [fn(groups[0])]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(groups)) as pool:
            return list(pool.map(fn, groups))
    finally:
        torch.set_num_threads(before)


def fit_targets(
    masks: np.ndarray,
    margins: np.ndarray,
    *,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: FitSettings,
    workers: int = 0,
) -> dict[str, np.ndarray]:
    """Datamodels of the columns of ``margins``: path on the fit rows, lambda by validation MSE, refit on both.

    Parameters
    ----------
    masks : bool [m, n]
        Training subsets (may be a memmap; read in row blocks).
    margins : float [m, T]
        Each row's margin on each target.
    fit_rows, val_rows : int [m_fit], [m_val]
        Disjoint rows of both (``split_validation_rows``).
    settings : FitSettings
    workers : int
        Groups of targets whose paths run side by side (``over_target_groups``); 0
        means ``group_count`` over torch's threads for the batched solver on the CPU,
        else 1. A target's result depends on its group only through rounding (the
        sparse start of a path multiplies only the columns its group uses), i.e.
        within the solver's tolerance.

    Returns
    -------
    dict
        weight float32 [n, T] (prediction = mask @ weight + bias), bias float32 [T],
        lam float64 [T], val_mse float64 [T], nnz int64 [T], flags uint8 [T]
        (``dmflow.core.codes``), the path statistics lams / train_mse / val_mse_path
        float64 and nnz_path int64 [L, T], num_fit_rows and num_val_rows. With
        ``settings.patience`` > 0 a target's path stops after that many lambdas
        without a new best validation MSE (its later path entries are NaN, nnz -1):
        the dense end of the path is the expensive part and rarely wins.
    """
    device = settings.torch_device
    fit_m = row_moments(masks, margins, fit_rows, device=device)
    val_m = row_moments(masks, margins, val_rows, device=device)
    return _fit_dense(fit_m, val_m, settings=settings, workers=workers)


def _fit_dense(
    fit_m: Moments, val_m: Moments, *, settings: FitSettings, workers: int, progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """The reference path: the dense centred Gram of all features, every solve over all of them
    (``progress``: as ``_fit_path``'s, counted in targets)."""
    device, dtype = settings.torch_device, settings.torch_dtype
    all_m = fit_m.combine(val_m)
    constant = _constant_targets(fit_m) | _constant_targets(all_m)
    (gram, c, yy), (gram_all, c_all, _) = fit_m.gram(dtype), all_m.gram(dtype)
    for cc in (c, c_all):
        cc[:, constant.to(c.device)] = 0  # lam_max 0: solved by w = 0 at once
    c, c_all = _target_major(c), _target_major(c_all)
    bounds, bounds_all = curvature(gram, settings.l2), curvature(gram_all, settings.l2)  # (L, mu) of the smooth part
    path = lambda_path(lambda_max(c, settings.nonneg), settings.num_lambdas, settings.lambda_min_ratio)
    if workers == 0:
        cpu_batched = settings.solver == "batched" and device == "cpu"
        workers = group_count(c.shape[1], c.shape[0], torch.get_num_threads()) if cpu_batched else 1

    def fit_group(g: slice) -> dict[str, torch.Tensor]:
        problem = _Dense(gram, bounds, settings, fit_m.select(g), val_m.select(g))
        path_g = _fit_path(problem, _columns(c, g), yy[g], path[:, g], settings, progress)
        best_w = path_g.pop("best_w")  # the refit on all rows starts there
        weight, conv, _ = _solve(gram_all, _columns(c_all, g), path_g["lam"], best_w, bounds_all, settings)
        if progress is not None:
            progress.advance((g.stop - g.start) / (settings.num_lambdas + 1))
        return {**path_g, "weight": weight, "converged": path_g["converged"] & conv}

    parts = over_target_groups(fit_group, c.shape[1], workers)
    bias_of = lambda weight: all_m.mean_y - all_m.mean_x @ weight.double()  # noqa: E731
    return _result(parts, path, constant.cpu(), bias_of, num_fit_rows=fit_m.count, num_val_rows=val_m.count)


def _result(
    parts: list[dict[str, torch.Tensor]],
    path: torch.Tensor,
    constant: torch.Tensor,
    bias_of: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_fit_rows: int,
    num_val_rows: int,
) -> dict[str, np.ndarray]:
    """The arrays of a fit, from its target groups' paths and refits (``fit_targets`` documents them)."""
    res = {key: torch.cat([p[key] for p in parts], dim=-1) for key in parts[0]}
    weight = res["weight"]
    bias = bias_of(weight)
    flags = torch.where(res["converged"], FLAG_OK, FLAG_NOT_CONVERGED).to(torch.uint8)
    flags[constant] = FLAG_CONSTANT
    return {
        "weight": np.ascontiguousarray(weight.float().cpu().numpy()),
        "bias": bias.float().cpu().numpy(),
        "lam": res["lam"].double().cpu().numpy(),
        "val_mse": res["best_mse"].cpu().numpy(),
        "nnz": (weight != 0).sum(0).cpu().numpy().astype(np.int64),
        "flags": flags.numpy(),
        "lams": path.double().cpu().numpy(),
        "train_mse": res["train_mse"].numpy(),
        "val_mse_path": res["val_mse"].numpy(),
        "nnz_path": res["nnz"].numpy(),
        "num_fit_rows": np.int64(num_fit_rows),
        "num_val_rows": np.int64(num_val_rows),
    }


def _fit_path(
    problem: _Problem,
    c: torch.Tensor,
    yy: torch.Tensor,
    path: torch.Tensor,
    settings: FitSettings,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """The lambda path of some targets on the fit rows, each scored on the validation rows.

    ``progress`` (counted in targets) advances by t / (L + 1) per lambda: the refit is the last share.

    Returns per target the lambda with the lowest validation MSE (``lam``), that MSE
    (``best_mse``) and its weights (``best_w``, the refit's warm start), whether every
    solve converged, and the path statistics train_mse / val_mse / nnz [L, T].
    """
    device = c.device
    n, t = c.shape
    nan = float("nan")
    train_mse = torch.full((settings.num_lambdas, t), nan, dtype=torch.float64)
    val_mse = torch.full_like(train_mse, nan)
    nnz = torch.full((settings.num_lambdas, t), -1, dtype=torch.long)
    converged = torch.ones(t, dtype=torch.bool)
    best_w, best_mse = torch.zeros_like(c), torch.full((t,), float("inf"), dtype=torch.float64, device=device)
    best_idx = torch.zeros(t, dtype=torch.long, device=device)
    since_best = torch.zeros(t, dtype=torch.long, device=device)
    w, w_prev = torch.zeros_like(c), torch.zeros_like(c)
    gw, gw_prev = torch.zeros_like(c), torch.zeros_like(c)  # G @ w, G @ w_prev
    active = torch.arange(t, device=device)
    share, steps = t / (settings.num_lambdas + 1), 0
    for j in range(settings.num_lambdas):
        if active.numel() == 0:
            break
        steps += 1
        ca, lam_j = _columns(c, active), path[j, active]
        w0, gw0 = _columns(w, active), _columns(gw, active)
        if j >= 2:  # extrapolate along the path (targets active now were active at j-1 and j-2)
            lams = {"lam_prev": path[j - 2, active], "lam": path[j - 1, active], "lam_next": lam_j}
            w0 = path_warm_start(_columns(w_prev, active), w0, **lams)
            gw0 = path_warm_start(_columns(gw_prev, active), gw0, **lams)  # G @ w0: the same combination
        wa, conv, gwa = problem.solve(active, ca, lam_j, w0, gw0)
        w_prev.T[active], gw_prev.T[active] = w.T[active], gw.T[active]
        w.T[active], gw.T[active] = wa.T, gwa.T
        converged[active.cpu()] &= conv
        train_mse[j, active.cpu()] = mse_from_moments(None, ca, yy[active], w=wa, gram_w=gwa).double().cpu()
        mse = problem.val_mse(active, wa)
        val_mse[j, active.cpu()], nnz[j, active.cpu()] = mse.cpu(), torch.count_nonzero(wa, dim=0).cpu()
        better = mse < best_mse[active]
        improved = active[better]
        best_mse[improved], best_idx[improved] = mse[better], j
        best_w.T[improved] = wa.T[better]
        since_best[active] = torch.where(better, 0, since_best[active] + 1)
        if settings.patience:
            active = active[since_best[active] < settings.patience]
        if progress is not None:
            progress.advance(share)
    if progress is not None:  # the lambdas that early stopping skipped
        progress.advance(share * (settings.num_lambdas - steps))
    lam = path.gather(0, best_idx.unsqueeze(0)).squeeze(0)
    return {
        "lam": lam,
        "best_mse": best_mse,
        "best_w": best_w,
        "converged": converged,
        "train_mse": train_mse,
        "val_mse": val_mse,
        "nnz": nnz,
    }
