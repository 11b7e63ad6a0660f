"""One lasso datamodel per target: the lambda path, the choice of lambda, the refit.

For the targets of a block: split the store's usable rows into fit and validation
rows, run a lambda path on the fit rows (warm starts), pick per target the lambda
with the lowest validation MSE, refit at that lambda on fit + validation rows, and
record the path statistics. Only centred moments of the rows are ever built
(``dmflow.lasso.moments``), never a dense float copy of all masks.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from dmflow.core.codes import FLAG_CONSTANT, FLAG_NO_DATA, FLAG_NOT_CONVERGED, FLAG_OK
from dmflow.core.device import resolve_device
from dmflow.core.schema import defaults
from dmflow.core.seeds import PURPOSE_VALIDATION_ROWS, alpha_key
from dmflow.lasso.cvxpy_solver import solve_cvxpy
from dmflow.lasso.moments import Moments, row_moments
from dmflow.lasso.problem import curvature, lambda_max, mse_from_moments
from dmflow.lasso.solvers import solve_batched

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
    """Columns ``idx`` of a target-major [n, T] matrix, target-major too (a gather of whole rows; a view for a slice)."""
    return x.T[idx].T


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
    device, dtype = settings.torch_device, settings.torch_dtype
    fit_m = row_moments(masks, margins, fit_rows, device=device)
    val_m = row_moments(masks, margins, val_rows, device=device)
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
        path_g = _fit_path(gram, _columns(c, g), yy[g], path[:, g], fit_m.select(g), val_m.select(g), bounds, settings)
        best_w = path_g.pop("best_w")  # the refit on all rows starts there
        weight, conv, _ = _solve(gram_all, _columns(c_all, g), path_g["lam"], best_w, bounds_all, settings)
        return {**path_g, "weight": weight, "converged": path_g["converged"] & conv}

    parts = over_target_groups(fit_group, c.shape[1], workers)
    res = {key: torch.cat([p[key] for p in parts], dim=-1) for key in parts[0]}
    weight = res["weight"]
    bias = all_m.mean_y - all_m.mean_x @ weight.double()
    flags = torch.where(res["converged"], FLAG_OK, FLAG_NOT_CONVERGED).to(torch.uint8)
    flags[constant.cpu()] = FLAG_CONSTANT
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
        "num_fit_rows": np.int64(len(fit_rows)),
        "num_val_rows": np.int64(len(val_rows)),
    }


def _fit_path(
    gram: torch.Tensor,
    c: torch.Tensor,
    yy: torch.Tensor,
    path: torch.Tensor,
    fit_m: Moments,
    val_m: Moments,
    bounds: tuple[float, float],
    settings: FitSettings,
) -> dict[str, torch.Tensor]:
    """The lambda path of some targets on the fit rows, each scored on the validation rows.

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
    for j in range(settings.num_lambdas):
        if active.numel() == 0:
            break
        ca, lam_j = _columns(c, active), path[j, active]
        w0, gw0 = _columns(w, active), _columns(gw, active)
        if j >= 2:  # extrapolate along the path (targets active now were active at j-1 and j-2)
            lams = {"lam_prev": path[j - 2, active], "lam": path[j - 1, active], "lam_next": lam_j}
            w0 = path_warm_start(_columns(w_prev, active), w0, **lams)
            gw0 = path_warm_start(_columns(gw_prev, active), gw0, **lams)  # G @ w0: the same combination
        wa, conv, gwa = _solve(gram, ca, lam_j, w0, bounds, settings, gw0)
        w_prev.T[active], gw_prev.T[active] = w.T[active], gw.T[active]
        w.T[active], gw.T[active] = wa.T, gwa.T
        converged[active.cpu()] &= conv
        train_mse[j, active.cpu()] = mse_from_moments(gram, ca, yy[active], w=wa, gram_w=gwa).double().cpu()
        mse = validation_mse(val_m.select(active), wa, fit_mean_x=fit_m.mean_x, fit_mean_y=fit_m.mean_y[active])
        val_mse[j, active.cpu()], nnz[j, active.cpu()] = mse.cpu(), (wa != 0).sum(0).cpu()
        better = mse < best_mse[active]
        improved = active[better]
        best_mse[improved], best_idx[improved] = mse[better], j
        best_w.T[improved] = wa.T[better]
        since_best[active] = torch.where(better, 0, since_best[active] + 1)
        if settings.patience:
            active = active[since_best[active] < settings.patience]
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


def zero_datamodels(n: int, num_targets: int, num_lambdas: int) -> dict[str, np.ndarray]:
    """What ``fit_targets`` returns when no row is usable: zero weights, every target flagged ``FLAG_NO_DATA``."""
    t = num_targets
    zeros = np.zeros((num_lambdas, t))
    return {
        "weight": np.zeros((n, t), np.float32),
        "bias": np.zeros(t, np.float32),
        "lam": np.zeros(t),
        "val_mse": np.full(t, np.nan),
        "nnz": np.zeros(t, np.int64),
        "flags": np.full(t, FLAG_NO_DATA, np.uint8),
        "lams": zeros,
        "train_mse": zeros,
        "val_mse_path": zeros,
        "nnz_path": zeros.astype(np.int64),
        "num_fit_rows": np.int64(0),
        "num_val_rows": np.int64(0),
    }
