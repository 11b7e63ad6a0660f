"""Stages fit_block and merge_fit: one lasso datamodel per target.

For a block of targets: split the fit store's rows into fit and validation rows,
run a lambda path on the fit rows (warm starts), pick per target the lambda with
the lowest validation MSE, refit at that lambda on fit + validation rows, and
record the path statistics. Only centred moments of the rows are ever built
(``dmflow.lasso.row_moments``), never a dense float copy of all masks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from dmflow.io import atomic_save_npz, load_npz
from dmflow.lasso import (
    Moments, curvature, lambda_max, lambda_path, mse_from_moments, path_warm_start, row_moments, solve_batched, solve_cvxpy,
)
from dmflow.seeds import PURPOSE_VALIDATION_ROWS, alpha_key
from dmflow.store import open_store

log = logging.getLogger(__name__)
R = TypeVar("R")

FLAG_OK = 0
FLAG_CONSTANT = 1  # margins do not vary over the usable rows: zero weights
FLAG_NO_DATA = 2  # no usable rows (every model diverged): zero weights
FLAG_NOT_CONVERGED = 4  # the batched solver hit max_iter somewhere on the path


@dataclass(frozen=True)
class FitSettings:
    """The ``fit`` config section."""

    solver: str = "batched"
    val_fraction: float = 0.1
    num_lambdas: int = 30
    lambda_min_ratio: float = 0.001
    tol: float = 1e-6
    max_iter: int = 2000
    dtype: str = "float32"
    nonneg: bool = False
    l2: float = 0.0
    cvxpy_solver: str = "CLARABEL"
    device: str = "auto"
    patience: int = 5

    @classmethod
    def from_config(cls, fit: dict) -> "FitSettings":
        return cls(**{k: fit[k] for k in cls.__dataclass_fields__ if k in fit})

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    @property
    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def split_validation_rows(rows: np.ndarray, val_fraction: float, seed: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically divide ``rows`` into (fit rows, validation rows), both sorted."""
    rng = np.random.default_rng(np.random.SeedSequence((seed, alpha_key(alpha), PURPOSE_VALIDATION_ROWS)))
    order = rng.permutation(len(rows))
    n_val = max(1, int(round(val_fraction * len(rows))))
    return np.sort(rows[order[n_val:]]), np.sort(rows[order[:n_val]])


def validation_mse(val: Moments, fit_mean_x: torch.Tensor, fit_mean_y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-target MSE on the validation rows of the model fitted on other rows.

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
        w = solve_cvxpy(gram.double().cpu().numpy(), c.double().cpu().numpy(), lam.double().cpu().numpy()[None],
                        settings.l2, settings.nonneg, settings.cvxpy_solver)[0]
        w = torch.as_tensor(w, dtype=c.dtype, device=c.device)
        return w, torch.ones(c.shape[1], dtype=torch.bool), gram @ w
    lip, mu = bounds
    res = solve_batched(gram, c, lam, w0, settings.l2, settings.nonneg, settings.tol, settings.max_iter, lip, mu,
                        gram_w0=gram_w0)
    return res.weight, res.converged.cpu(), res.gram_weight


def _target_major(x: torch.Tensor) -> torch.Tensor:
    """The same [n, T] matrix stored target by target (x.T contiguous): the fused solver's layout, so it
    copies c and the warm starts without transposing them, at every lambda."""
    return x.T.contiguous().T


def _columns(x: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
    """Columns ``idx`` of a target-major [n, T] matrix, target-major too (a gather of whole rows; a view for a slice)."""
    return x.T[idx].T


# Below this many targets x features^2 per group, two groups side by side were no faster
# than one (benchmarks/lasso_solvers.py, n = 1000: 100 targets per group 0.84-0.95x,
# 200 per group 1.11-1.19x, 400 per group 1.17-1.19x): the groups' Python bookkeeping
# takes turns on the interpreter lock.
MIN_GROUP_WORK = 2e8


def group_count(num_targets: int, num_features: int, threads: int) -> int:
    """How many target groups ``fit_targets`` runs side by side: one per thread, each of at least ``MIN_GROUP_WORK``."""
    return max(1, min(threads, int(num_targets * num_features**2 // MIN_GROUP_WORK)))


def over_target_groups(fn: Callable[[slice], R], num_targets: int, workers: int) -> list[R]:
    """``fn`` on ``workers`` contiguous groups of the targets at once, one Python thread each, torch on one thread.

    Targets are independent, so each group can run its whole lambda path alone. Within
    one solve the matrix product keeps both threads busy, but the fused kernel and the
    bookkeeping between products run on one; whole groups side by side keep every core
    busy all the time (benchmarks/lasso_solvers.py times both). Splitting each solve
    instead waits for the slower group at every lambda (measured: no gain).
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
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: FitSettings,
    workers: int = 0,
) -> dict[str, np.ndarray]:
    """Datamodels for the columns of ``margins`` [m, T] (masks [m, n], rows index both).

    Returns weight [n, T] float32, bias, lam, val_mse, nnz, flags [T], and the path
    statistics lams / train_mse / val_mse_path / nnz_path [L, T]. With
    ``settings.patience`` > 0 a target's path stops after that many lambdas without a
    new best validation MSE (its later path entries are NaN, nnz -1): the dense end of
    the path is the expensive part and rarely wins.

    ``workers`` groups of targets run their paths side by side (``over_target_groups``);
    0 means ``group_count`` over torch's threads for the batched solver on the CPU,
    else 1. A target's result depends on its group only through rounding (the sparse
    start of a path multiplies only the columns its group uses), i.e. within the
    solver's tolerance.
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
    gram: torch.Tensor, c: torch.Tensor, yy: torch.Tensor, path: torch.Tensor, fit_m: Moments, val_m: Moments,
    bounds: tuple[float, float], settings: FitSettings,
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
            lams = (path[j - 2, active], path[j - 1, active], lam_j)
            w0 = path_warm_start(_columns(w_prev, active), w0, *lams)
            gw0 = path_warm_start(_columns(gw_prev, active), gw0, *lams)  # G @ w0: the same combination
        wa, conv, gwa = _solve(gram, ca, lam_j, w0, bounds, settings, gw0)
        w_prev.T[active], gw_prev.T[active] = w.T[active], gw.T[active]
        w.T[active], gw.T[active] = wa.T, gwa.T
        converged[active.cpu()] &= conv
        train_mse[j, active.cpu()] = mse_from_moments(gram, ca, yy[active], wa, gwa).double().cpu()
        mse = validation_mse(val_m.select(active), fit_m.mean_x, fit_m.mean_y[active], wa)
        val_mse[j, active.cpu()], nnz[j, active.cpu()] = mse.cpu(), (wa != 0).sum(0).cpu()
        better = mse < best_mse[active]
        improved = active[better]
        best_mse[improved], best_idx[improved] = mse[better], j
        best_w.T[improved] = wa.T[better]
        since_best[active] = torch.where(better, 0, since_best[active] + 1)
        if settings.patience:
            active = active[since_best[active] < settings.patience]
    lam = path.gather(0, best_idx.unsqueeze(0)).squeeze(0)
    return {"lam": lam, "best_mse": best_mse, "best_w": best_w, "converged": converged,
            "train_mse": train_mse, "val_mse": val_mse, "nnz": nnz}


def block_targets(block: int, targets_per_job: int, num_targets: int) -> np.ndarray:
    """Target indices of one fit job."""
    start = block * targets_per_job
    if start >= num_targets:
        raise ValueError(f"block {block} is past the last target ({num_targets} targets, {targets_per_job} per job)")
    return np.arange(start, min(start + targets_per_job, num_targets))


def usable_rows(status: np.ndarray) -> np.ndarray:
    """Rows whose first replicate trained without diverging."""
    return np.flatnonzero(status[:, 0] == 0)


def fit_block(store_path: Path, block: int, targets_per_job: int, settings: FitSettings, seed: int) -> dict[str, np.ndarray]:
    """Fit one block of targets from a fit-split store."""
    store = open_store(store_path)
    targets = block_targets(block, targets_per_job, store.manifest["num_targets"])
    rows = usable_rows(store.status)
    margins = store.margins[:, 0, targets[0] : targets[-1] + 1]
    n = store.masks.shape[1]
    if len(rows) < 3:
        log.warning("%s: only %d usable rows; every target gets zero weights", store_path, len(rows))
        t = len(targets)
        zeros = np.zeros((settings.num_lambdas, t))
        result = {
            "weight": np.zeros((n, t), np.float32), "bias": np.zeros(t, np.float32), "lam": np.zeros(t),
            "val_mse": np.full(t, np.nan), "nnz": np.zeros(t, np.int64), "flags": np.full(t, FLAG_NO_DATA, np.uint8),
            "lams": zeros, "train_mse": zeros, "val_mse_path": zeros, "nnz_path": zeros.astype(np.int64),
            "num_fit_rows": np.int64(0), "num_val_rows": np.int64(0),
        }
    else:
        fit_rows, val_rows = split_validation_rows(rows, settings.val_fraction, seed, store.manifest["alpha"])
        result = fit_targets(store.masks, margins, fit_rows, val_rows, settings)
    result["targets"] = targets
    return result


def run_fit_block(store_path: Path, out: Path, block: int, targets_per_job: int, settings: FitSettings, seed: int, threads: int = 1) -> None:
    """Fit one block and write ``block{b}.npz`` atomically."""
    torch.set_num_threads(max(1, int(threads)))
    result = fit_block(store_path, block, targets_per_job, settings, seed)
    flagged = int((result["flags"] != FLAG_OK).sum())
    log.info("block %d: %d targets, mean nnz %.1f, %d flagged", block, len(result["targets"]), result["nnz"].mean(), flagged)
    atomic_save_npz(out, result)


PER_TARGET = ("weight", "bias", "lam", "val_mse", "nnz", "flags", "lams", "train_mse", "val_mse_path", "nnz_path")


def merge_blocks(block_paths: Sequence[Path], data_path: Path, out: Path) -> dict[str, np.ndarray]:
    """Concatenate blocks in target order into the datamodels file, with target ids."""
    blocks = sorted((load_npz(p) for p in block_paths), key=lambda b: int(b["targets"][0]))
    targets = np.concatenate([b["targets"] for b in blocks])
    data = load_npz(data_path)
    if not np.array_equal(targets, np.arange(len(data["target_ids"]))):
        raise ValueError(f"blocks cover targets {targets.min()}..{targets.max()} ({len(targets)}), expected 0..{len(data['target_ids']) - 1}")
    merged = {}
    for key in PER_TARGET:
        axis = blocks[0][key].ndim - 1  # targets are the last axis of every per-target array
        merged[key] = np.concatenate([b[key] for b in blocks], axis=axis)
    merged["target_ids"] = data["target_ids"]
    merged["train_ids"] = data["train_ids"]
    merged["num_fit_rows"] = blocks[0]["num_fit_rows"]
    merged["num_val_rows"] = blocks[0]["num_val_rows"]
    atomic_save_npz(out, merged)
    return merged
