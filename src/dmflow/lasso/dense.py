"""The reference path: every solve over all features of the dense centred Gram (n^2 in memory, GEMMs over all
features), with the configured solver (batched proximal gradient, or cvxpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmflow.core.progress import Progress
from dmflow.lasso.cvxpy_solver import solve_cvxpy
from dmflow.lasso.groups import group_count, over_target_groups
from dmflow.lasso.moments import CountMoments, Moments
from dmflow.lasso.path_loop import GroupPaths, fit_path, lambda_path
from dmflow.lasso.problem import constant_targets, curvature, lambda_max
from dmflow.lasso.settings import FitSettings
from dmflow.lasso.solvers import solve_batched
from dmflow.lasso.target_major import columns, target_major


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


@dataclass
class _Dense:
    """The reference: every solve over all features of a dense centred Gram."""

    gram: torch.Tensor
    bounds: tuple[float, float]
    settings: FitSettings
    fit_m: Moments
    val_m: Moments

    def solve(self, targets, c, lam, *, w0, gram_w0):
        return _solve(self.gram, c, lam, w0, self.bounds, self.settings, gram_w0)

    def val_mse(self, targets, w):
        return validation_mse(
            self.val_m.select(targets), w, fit_mean_x=self.fit_m.mean_x, fit_mean_y=self.fit_m.mean_y[targets]
        )


def dense_path(
    fit_m: Moments, val_m: Moments, *, settings: FitSettings, workers: int, progress: Progress | None = None
) -> GroupPaths:
    """The reference path of all targets on the fit rows, and each target's refit on fit and validation rows.

    Parameters
    ----------
    fit_m, val_m : Moments
        The fit rows' and the validation rows' centred moments (dense [n, n] Grams).
    settings : FitSettings
    workers : int
        Target groups run side by side (``over_target_groups``); 0: ``group_count`` over torch's threads
        for the batched solver on the CPU, else 1.
    progress : Progress, optional
        Counted in targets, along each group's path and refit (``fit_path``).

    Returns
    -------
    GroupPaths
        What ``dmflow.lasso.path`` makes the fit's arrays of.
    """
    device, dtype = settings.torch_device, settings.torch_dtype
    all_m = fit_m.combine(val_m)
    constant = constant_targets(fit_m) | constant_targets(all_m)
    (gram, c, yy), (gram_all, c_all, _) = fit_m.gram(dtype), all_m.gram(dtype)
    for cc in (c, c_all):
        cc[:, constant.to(c.device)] = 0  # lam_max 0: solved by w = 0 at once
    c, c_all = target_major(c), target_major(c_all)
    bounds, bounds_all = curvature(gram, settings.l2), curvature(gram_all, settings.l2)  # (L, mu) of the smooth part
    path = lambda_path(lambda_max(c, settings.nonneg), settings.num_lambdas, settings.lambda_min_ratio)
    if workers == 0:
        cpu_batched = settings.solver == "batched" and device == "cpu"
        workers = group_count(c.shape[1], c.shape[0], torch.get_num_threads()) if cpu_batched else 1

    def fit_group(g: slice) -> dict[str, torch.Tensor]:
        problem = _Dense(gram, bounds, settings, fit_m.select(g), val_m.select(g))
        path_g = fit_path(problem, columns(c, g), yy[g], path=path[:, g], settings=settings, progress=progress)
        best_w = path_g.pop("best_w")  # the refit on all rows starts there
        weight, conv, _ = _solve(gram_all, columns(c_all, g), path_g["lam"], best_w, bounds_all, settings)
        if progress is not None:
            progress.advance((g.stop - g.start) / (settings.num_lambdas + 1))
        return {**path_g, "weight": weight, "converged": path_g["converged"] & conv}

    parts = over_target_groups(fit_group, c.shape[1], workers)
    bias_of = lambda weight: all_m.mean_y - all_m.mean_x @ weight.double()  # noqa: E731
    return GroupPaths(parts, path, constant.cpu(), bias_of)


def dense_moments(mom: CountMoments, settings: FitSettings) -> Moments:
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
