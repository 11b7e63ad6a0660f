"""The working-set solver: a lasso on ``CountMoments`` whose cost follows each target's active set, not n^2,
and the path of all targets with it (``active_path``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from dmflow.core.budgets import BUCKET_BYTES, CD_BUFFER_ENTRIES
from dmflow.core.progress import Progress
from dmflow.lasso import working_set_kernels as kernels
from dmflow.lasso.groups import group_count, over_target_groups
from dmflow.lasso.moments import CountMoments
from dmflow.lasso.path_loop import GroupPaths, fit_path, lambda_path
from dmflow.lasso.problem import GREEDY_STEP, constant_targets, lambda_max
from dmflow.lasso.settings import FitSettings
from dmflow.lasso.solvers import solve_batched
from dmflow.lasso.spectrum import bottom_eigenvalue, top_eigenvalue
from dmflow.lasso.stored_gram import CentredGram, gram_product, gram_quadratic, gram_terms, union_gather
from dmflow.lasso.target_major import columns, pick, set_indices
from dmflow.lasso.torch_solver import PaddedGrams, proximal_loop

COORDINATE_DESCENT = True
"""On the CPU, working sets are solved by coordinate descent (``kernels.working_set_cd``), faster than the padded
proximal solver and in less memory (benchmarks/RESULTS.md, "The lasso package's figures")."""
MAX_ROUNDS = 50
DENSE_SHARE = 0.25
"""A target whose working set holds more than this share of the features is solved on the dense Gram."""


class ActiveSet:
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

    def __init__(
        self, mom: CountMoments, val: CountMoments | None, *, settings: FitSettings, dense: CentredGram
    ) -> None:
        self.mom, self.val, self.settings, self.dense = mom, val, settings, dense
        self.dtype, self.device = settings.torch_dtype, settings.torch_device
        self.ever = torch.zeros((len(mom.mean_y), mom.n), dtype=torch.bool, device=self.device)  # [T, n]
        ratio = settings.lambda_min_ratio ** (1 / max(settings.num_lambdas - 1, 1))
        self.strong = max(0.0, 2 - 1 / ratio)

    def _product(self, w: torch.Tensor) -> torch.Tensor:
        """[n, t]: G W, G the problem's rows' centred Gram (``gram_product``)."""
        return gram_product(self.mom, w, dtype=self.dtype, device=self.device)

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
        idx, size = set_indices(sets, n)
        size = size.numpy().astype(np.int64)
        w_set = pick(w, idx).T.double().contiguous()
        grad = (pick(gw, idx) - pick(c, idx)).T.double().contiguous()
        converged, epochs = np.zeros(len(size), dtype=np.bool_), np.zeros(len(size), dtype=np.int64)
        terms, idx_np, w_np, grad_np = gram_terms(self.mom), idx.numpy(), w_set.numpy(), grad.numpy()
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
        gather = union_gather(self.mom, sets, dtype=self.dtype, device=self.device)
        for bucket in self._buckets(sets):
            cols = bucket.to(c.device)
            idx, _ = set_indices(sets[:, bucket.to(sets.device)], n)
            grams = gather(idx)
            lip = _step_bounds(grams, self.mom.lip, s.l2)
            res = proximal_loop(
                PaddedGrams(grams),
                pick(c[:, cols], idx),
                lam[cols],
                w0=pick(w[:, cols], idx),
                l2=s.l2,
                nonneg=s.nonneg,
                tol=s.tol,
                scale=scale[cols],
                max_iter=s.max_iter,
                steps=(1.0 / lip, GREEDY_STEP / lip, 1.0 / lip),
                gram_w0=pick(gw[:, cols], idx),
            )
            out[cols] = out.new_zeros((len(cols), n + 1)).scatter_(1, idx, res.weight.T)
            converged[bucket] = res.converged.cpu()
        return out[:, :n].T, converged

    def solve(self, targets, c, lam, *, w0, gram_w0):
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
            columns(c, cols) / unit,
            lam[cols] / unit,
            w0=columns(w0, cols),
            gram_w0=columns(gram_w0, cols) / unit,
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
                columns(c, todo), lam[todo], columns(w, todo), columns(gw, todo), scale[todo], sets[:, todo]
            )
            gw_t = self._product(w_t)
            w[:, todo], gw[:, todo], converged[todo.cpu()] = w_t, gw_t, conv_t
            grad = gw_t - columns(c, todo) + s.l2 * w_t if s.l2 else gw_t - columns(c, todo)
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
        quad = gram_quadratic(val, w, dtype=self.dtype, device=self.device)  # w^T G_val w, G_val = Xc^T Xc / m_val
        cross = torch.from_numpy(np.asarray(val.cross)[t]).to(w.device)  # [t, n]
        dx = torch.from_numpy(val.mean_x - fit.mean_x).to(w.device)
        offset = torch.from_numpy(val.mean_y[t] - fit.mean_y[t]).to(w.device) - dx @ w64
        syy = torch.from_numpy(val.syy[t]).to(w.device)
        return (quad + (syy - 2 * (cross.T * w64).sum(0)) / val.count + offset**2).cpu()


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


def _step_bounds(grams: torch.Tensor, lip: float, l2: float) -> torch.Tensor:
    """L [t]: a step bound for each padded Gram G[A_t, A_t] [t, K, K]: the smaller of the row set's top
    eigenvalue ``lip`` (a bound for every principal submatrix, by Cauchy's interlacing theorem) and the
    Gershgorin bound max_i sum_j |G_ij| (tighter for small working sets), + ``l2``."""
    gershgorin = torch.linalg.matrix_norm(grams, ord=float("inf"))  # max_i sum_j |G_ij|
    return torch.clamp(gershgorin, max=lip * 1.01).clamp(min=1e-12) + l2


def active_path(
    fit: CountMoments,
    val: CountMoments,
    *,
    settings: FitSettings,
    workers: int,
    all_rows_lip: float | None,
    all_rows_mu: float | None,
    progress: Progress | None = None,
) -> GroupPaths:
    """The lambda path of all targets on the fit rows with working sets, and each target's refit on fit and
    validation rows.

    Parameters
    ----------
    fit, val : CountMoments
        The fit rows' and the validation rows' moments (Grams float32 [n, n], may be memory-mapped).
    settings : FitSettings
    workers : int
        Target groups run side by side; 0: ``group_count`` over torch's threads on the CPU, else 1.
    all_rows_lip, all_rows_mu : float or None
        The ends of the spectrum of fit and validation rows together, when known.
    progress : Progress, optional
        Counted in targets, along each group's path and refit (``fit_path``).

    Returns
    -------
    GroupPaths
        What ``dmflow.lasso.path`` makes the fit's arrays of.
    """
    device, dtype = settings.torch_device, settings.torch_dtype
    fit, every = _with_spectrum(fit), _with_spectrum(fit.combine(val, lip=all_rows_lip, mu=all_rows_mu))
    constant = constant_targets(fit) | constant_targets(every)

    def cross_target_major(mom: CountMoments) -> torch.Tensor:
        c = torch.from_numpy(np.asarray(mom.cross, np.float64) / mom.count).to(device=device, dtype=dtype)
        c[torch.from_numpy(constant)] = 0  # lam_max 0: solved by w = 0 at once
        return c.T  # [n, T], each target's column contiguous

    c, c_all = cross_target_major(fit), cross_target_major(every)
    yy = torch.from_numpy(fit.syy / fit.count).to(device=device, dtype=dtype)
    path = lambda_path(lambda_max(c, settings.nonneg), settings.num_lambdas, settings.lambda_min_ratio)
    if workers == 0:
        workers = group_count(c.shape[1], c.shape[0], torch.get_num_threads()) if device == "cpu" else 1

    dense_fit, dense_all = CentredGram(fit, settings), CentredGram(every, settings)

    def fit_group(g: slice) -> dict[str, torch.Tensor]:
        problem = ActiveSet(fit.select(g), val.select(g), settings=settings, dense=dense_fit)
        path_g = fit_path(problem, columns(c, g), yy[g], path=path[:, g], settings=settings, progress=progress)
        best_w = path_g.pop("best_w")  # the refit on all rows starts there
        refit = ActiveSet(every.select(g), None, settings=settings, dense=dense_all)
        weight, conv, _ = refit.solve(
            torch.arange(g.stop - g.start), columns(c_all, g), path_g["lam"], w0=best_w, gram_w0=None
        )
        if progress is not None:
            progress.advance((g.stop - g.start) / (settings.num_lambdas + 1))
        return {**path_g, "weight": weight, "converged": path_g["converged"] & conv}

    parts = over_target_groups(fit_group, c.shape[1], workers)

    def bias_of(weight: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(every.mean_y - every.mean_x @ weight.double().cpu().numpy())

    return GroupPaths(parts, path, torch.from_numpy(constant), bias_of)


def _with_spectrum(mom: CountMoments) -> CountMoments:
    """``mom`` with its largest and smallest non-null eigenvalues (``lip``, ``mu``), computed where missing."""
    lip = mom.lip if mom.lip is not None else top_eigenvalue(mom)
    return replace(mom, lip=lip, mu=mom.mu if mom.mu is not None else bottom_eigenvalue(mom, lip))
