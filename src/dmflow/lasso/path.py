"""One lasso datamodel per target: which path fits them, and the arrays of the fit.

For the targets of a block: split the store's usable rows into fit and validation
rows (``dmflow.lasso.settings``), run a lambda path on the fit rows (warm starts,
``dmflow.lasso.path_loop``), pick per target the lambda with the lowest validation MSE,
refit at that lambda on fit + validation rows, and record the path statistics. The path
runs on the dense centred Gram (the reference, ``dmflow.lasso.dense``) or, beyond
``DENSE_MAX_N`` features, on per-target working sets (``dmflow.lasso.working_sets``).
Only centred moments of the rows are ever built (``dmflow.lasso.moments``), never a
dense float copy of all masks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dmflow.core.budgets import DENSE_MAX_N
from dmflow.core.codes import FLAG_CONSTANT, FLAG_NOT_CONVERGED, FLAG_OK
from dmflow.core.progress import Progress
from dmflow.lasso.dense import dense_moments, dense_path
from dmflow.lasso.moments import CountMoments, row_moments
from dmflow.lasso.settings import FitSettings
from dmflow.lasso.working_sets import active_path


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
        The fit rows' and the validation rows' moments, for the targets to fit (``select``):
        Grams float32 [n, n], cross moments [T, n]. The Grams may be memory-mapped: only
        the rows of the working sets are read.
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
        The arrays ``fit_targets`` returns (weight float32 [n, T], bias [T], the path
        statistics [L, T], ...), equal to its up to the solver's tolerance
        (``tests/test_fit.py`` holds the two paths to it).
    """
    if method not in ("auto", "active", "dense"):
        raise ValueError(f"method={method!r} is not one of auto, active, dense")
    if settings.solver != "batched" or method == "dense" or (method == "auto" and fit.n <= DENSE_MAX_N):
        fit_m, val_m = dense_moments(fit, settings), dense_moments(val, settings)
        return _result(
            *dense_path(fit_m, val_m, settings=settings, workers=workers or 1, progress=progress),
            num_fit_rows=fit.count,
            num_val_rows=val.count,
        )
    paths = active_path(
        fit,
        val,
        settings=settings,
        workers=workers,
        all_rows_lip=all_rows_lip,
        all_rows_mu=all_rows_mu,
        progress=progress,
    )
    return _result(*paths, num_fit_rows=fit.count, num_val_rows=val.count)


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
        Disjoint rows of both (``dmflow.lasso.settings.split_validation_rows``).
    settings : FitSettings
    workers : int
        Groups of targets whose paths run side by side (``groups.over_target_groups``); 0
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
    paths = dense_path(fit_m, val_m, settings=settings, workers=workers)
    return _result(*paths, num_fit_rows=fit_m.count, num_val_rows=val_m.count)


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
