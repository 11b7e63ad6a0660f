"""The batched solver on the CPU with fused numba kernels (``dmflow.lasso.fused_kernels``).

Torch's elementwise passes over [n, T] read the whole batch from memory many times
per iteration; here one kernel call makes two passes over each target's row, in the
target-major layout [T, n]. The iterates are the torch loop's (``torch_solver``) up
to rounding; ``benchmarks/lasso_solvers.py`` times both.
"""

from __future__ import annotations

import numpy as np
import torch

from dmflow.lasso import fused_kernels as kernels
from dmflow.lasso.problem import GREEDY_SHRINK, PLAIN_STEPS, SolveResult, lambda_max


def solve_fused(
    gram: torch.Tensor,
    c: torch.Tensor,
    lam: torch.Tensor,
    *,
    w0: torch.Tensor | None,
    l2: float,
    nonneg: bool,
    tol: float,
    scale: torch.Tensor | None,
    max_iter: int,
    steps: tuple[float, float, float],
    gram_w0: torch.Tensor | None,
) -> SolveResult:
    """``solve_batched`` on CPU with the numba kernels, in the target-major layout [T, n].

    The same iterates as the torch loop (up to rounding): iterate k's gradient comes
    from one matrix product (x_k @ G - c, G symmetric; the product subtracts c, so the
    kernel reads one array less), then one kernel call tests the KKT conditions at x_k
    and computes x_{k+1}. A target that finishes leaves the batch at once: the last
    pending rows move into its place (a copy of as many rows as finished). All data
    movement (transposes in and out, those moves, the sparse product's gather) is
    single-threaded numba too, leaving the other cores to the matrix product. Inputs that are already
    target-major (``c.T`` contiguous, as ``fit_targets`` keeps them along a path) are
    copied without a transpose, and the weights come back in the layout of ``c``.
    """
    n, t = c.shape
    dtype = c.dtype
    w = torch.zeros_like(c) if w0 is None else torch.empty_like(c)
    gw = torch.zeros_like(c) if w0 is None else torch.empty_like(c)  # G @ w
    iterations = torch.zeros(t, dtype=torch.long)
    converged = torch.zeros(t, dtype=torch.bool)
    if t == 0:
        return SolveResult(w, iterations, converged, gw)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    l2_ = np_dtype.type(l2)
    # numpy's empty/zeros cost no pass over memory (torch's zeros is a threaded fill)
    ct, xn, x, gp, gx = (
        torch.from_numpy(f((t, n), dtype=np_dtype)) for f in (np.empty, np.empty, np.zeros, np.zeros, np.empty)
    )
    _to_target_major(c, ct)
    if w0 is not None:
        _to_target_major(w0, xn)
        nz = (xn.numpy() != 0).any(0)  # numpy's any over this axis is much faster than torch's
    else:
        xn.zero_()
        nz = np.zeros(n, dtype=np.bool_)
    scale = (lambda_max(c, nonneg) if scale is None else scale.to(dtype)).numpy()
    tol_a = torch.from_numpy(np.maximum(scale, 1e-30) * np_dtype.type(tol))
    active, la = torch.arange(t), lam.to(dtype).clone()
    beta, gam = torch.zeros(t, dtype=dtype), torch.full((t,), steps[1], dtype=dtype)
    # dd = -1 marks the first accelerated call (k = PLAIN_STEPS; the plain calls before it
    # leave dd alone): a restart (beta 0), as in the torch loop
    dd, dpd = torch.full((t,), -1.0, dtype=torch.float64), torch.zeros(t, dtype=torch.float64)
    d0 = torch.full((t,), -1.0, dtype=torch.float64)  # the first accelerated step's dd (-1: not taken yet)
    pending, ok = torch.ones(t, dtype=torch.bool), torch.zeros(t, dtype=torch.bool)
    sparse, cols, gram_cols = True, None, None  # sparse: at most half the columns of the iterates are non-zero
    for k in range(max_iter + 1):
        if sparse:
            new_cols = np.flatnonzero(nz)
            sparse = new_cols.size <= n // 2
        # gx = xn @ G - c: the product subtracts c (its C operand), so the kernel never reads c
        if k == 0 and gram_w0 is not None:
            if gram_w0.T.is_contiguous():  # target-major along a path: one pass
                np.subtract(gram_w0.T.numpy(), ct.numpy(), out=gx.numpy())
            else:
                _to_target_major(gram_w0, gx)
                np.subtract(gx.numpy(), ct.numpy(), out=gx.numpy())
        elif not sparse:
            torch.addmm(ct, xn, gram, beta=-1, out=gx)
        elif new_cols.size == 0:
            np.negative(ct.numpy(), out=gx.numpy())
        else:  # only the non-zero columns take part; G's rows are gathered again when they change
            if cols is None or not np.array_equal(cols, new_cols):
                cols = new_cols
                gram_cols = gram.index_select(0, torch.from_numpy(cols))
            xs = torch.from_numpy(np.empty((xn.shape[0], cols.size), dtype=np_dtype))
            kernels.gather_columns(xn.numpy(), cols, xs.numpy())
            torch.addmm(ct, xs, gram_cols, beta=-1, out=gx)
        kernels.prox_grad_step(
            gx.numpy(),
            xn.numpy(),
            x.numpy(),
            gp.numpy(),
            la.numpy(),
            tol_a.numpy(),
            gam.numpy(),
            beta.numpy(),
            dd.numpy(),
            dpd.numpy(),
            d0.numpy(),
            pending.numpy(),
            ok.numpy(),
            nz,
            np_dtype.type(steps[0]),
            np_dtype.type(steps[2]),
            np_dtype.type(GREEDY_SHRINK),
            l2_,
            nonneg,
            k >= PLAIN_STEPS,
        )
        newly = pending if k == max_iter else ok & pending
        if newly.any():  # record them, then the last rows of the batch take their places
            local = newly.nonzero().squeeze(1)
            rows_, cols_ = local.numpy(), active[local].numpy()
            if w.T.is_contiguous():
                kernels.store_rows(xn.numpy(), rows_, cols_, w.T.numpy())
                kernels.store_rows(gx.numpy(), rows_, cols_, gw.T.numpy(), ct.numpy())  # G @ w = gx + c
            else:
                kernels.store_transposed(xn.numpy(), rows_, cols_, w.numpy())
                kernels.store_transposed(gx.numpy(), rows_, cols_, gw.numpy(), ct.numpy())
            iterations[active[local]] = k
            converged[active[local]] = ok[local]
            pending &= ~newly
            left = int(pending.sum())
            if left == 0:
                break
            # finished rows in the first `left` places get the pending rows from beyond them:
            # a copy of as many rows as finished, where keeping the order would move all rows after the first
            holes = (~pending[:left]).nonzero().squeeze(1)
            movers = pending[left:].nonzero().squeeze(1) + left
            for v in (ct, xn, x, gp):
                kernels.move_rows(v.numpy(), holes.numpy(), movers.numpy())
            ct, xn, x, gp, gx = (v[:left] for v in (ct, xn, x, gp, gx))
            for v in (active, la, tol_a, beta, gam, d0, dd, dpd):
                v[holes] = v[movers]
            active, la, tol_a, beta, gam, d0, dd, dpd = (v[:left] for v in (active, la, tol_a, beta, gam, d0, dd, dpd))
            pending, ok = pending[:left].fill_(True), ok[:left]
        x, xn = xn, x  # the kernel wrote the next iterate into x
    return SolveResult(w, iterations, converged, gw)


def _to_target_major(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst [T, n] = src [n, T]: a plain copy when src is a view of a target-major array, else a transpose."""
    if src.T.is_contiguous():
        np.copyto(dst.numpy(), src.T.numpy())
    else:
        kernels.transpose_into(src.numpy(), dst.numpy())
