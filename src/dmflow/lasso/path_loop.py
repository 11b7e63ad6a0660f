"""The lambda path of some targets: a geometric grid of lambdas, warm starts along it, and the loop that solves
each lambda, scores it on the validation rows and keeps each target's best (any ``Problem``: the dense
reference, ``dmflow.lasso.dense``, or the working sets, ``dmflow.lasso.working_sets``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch

from dmflow.core.progress import Progress
from dmflow.lasso.problem import mse_from_moments
from dmflow.lasso.settings import FitSettings
from dmflow.lasso.target_major import columns


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


class Problem(Protocol):
    """What the lambda path needs of a lasso problem over some targets (``fit_path``)."""

    def solve(
        self,
        targets: torch.Tensor,
        c: torch.Tensor,
        lam: torch.Tensor,
        *,
        w0: torch.Tensor,
        gram_w0: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One lambda per target (``targets`` index the problem's) -> (weights [n, t], converged [t], G @ weights)."""
        ...

    def val_mse(self, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """float64 [t]: the validation MSE of weights w [n, t] of some of the problem's targets."""
        ...


class GroupPaths(NamedTuple):
    """A fit's paths and refits, per target group, before ``dmflow.lasso.path`` assembles its arrays."""

    parts: list[dict[str, torch.Tensor]]
    """Per target group: ``fit_path``'s statistics with the refit's ``weight`` and ``converged``."""
    path: torch.Tensor
    """[L, T]: the lambdas of every target."""
    constant: torch.Tensor
    """bool [T]: targets whose margins do not vary (``problem.constant_targets``)."""
    bias_of: Callable[[torch.Tensor], torch.Tensor]
    """weights [n, T] -> the intercepts [T] of the refit rows."""


def fit_path(
    problem: Problem,
    c: torch.Tensor,
    yy: torch.Tensor,
    *,
    path: torch.Tensor,
    settings: FitSettings,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """The lambda path of some targets on the fit rows, each scored on the validation rows.

    Parameters
    ----------
    problem : Problem
        Solves one lambda per target and scores weights on the validation rows.
    c : float [n, t]
        The centred cross moments Xc^T yc / m of the fit rows, target-major.
    yy : float [t]
        ||yc||^2 / m of the fit rows.
    path : float [L, t]
        The lambdas of each target, decreasing (``lambda_path``).
    settings : FitSettings
        ``num_lambdas`` (L) and ``patience`` are read here.
    progress : Progress, optional
        Counted in targets: advanced by t / (L + 1) per lambda (the refit is the last share).

    Returns
    -------
    dict
        Per target the lambda with the lowest validation MSE (``lam`` [t]), that MSE
        (``best_mse`` float64 [t]) and its weights (``best_w`` [n, t], the refit's warm
        start), whether every solve converged (``converged`` bool [t]), and the path
        statistics ``train_mse`` / ``val_mse`` float64 and ``nnz`` int64 [L, t] (NaN and
        -1 after a target's path stopped for ``patience``).
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
        ca, lam_j = columns(c, active), path[j, active]
        w0, gw0 = columns(w, active), columns(gw, active)
        if j >= 2:  # extrapolate along the path (targets active now were active at j-1 and j-2)
            lams = {"lam_prev": path[j - 2, active], "lam": path[j - 1, active], "lam_next": lam_j}
            w0 = path_warm_start(columns(w_prev, active), w0, **lams)
            gw0 = path_warm_start(columns(gw_prev, active), gw0, **lams)  # G @ w0: the same combination
        wa, conv, gwa = problem.solve(active, ca, lam_j, w0=w0, gram_w0=gw0)
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
