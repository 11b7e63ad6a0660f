"""Fused numba kernels of the batched lasso solver on the CPU (their one caller: ``dmflow.lasso.fused``).

The arrays are target-major, [targets, features], so each target's iterate is one
contiguous row: a kernel makes one pass over a row for everything that needs the new
gradient (KKT violation, restart test, the next forward step) and a second pass, on the
row while it is still in cache, for the next proximal step. Torch's elementwise passes
over [features, targets] read the whole batch from memory many times per iteration.

The kernels run on one thread: they are short, and threads would wait for each other
at every call, while the matrix product between the kernel calls keeps torch's threads.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def prox_grad_step(
    gx,
    xn,
    x,
    gp,
    lam,
    tol,
    gam,
    beta,
    dd,
    dpd,
    d0,
    pending,
    ok,
    nz,
    step,
    min_step,
    shrink,
    l2,
    nonneg,
    accelerate,
):  # pragma: no cover
    """One proximal gradient iteration (greedy FISTA's, or plain) for each pending row, given gx = xn @ G - c
    (G symmetric; the matrix product subtracts c, so the kernel does not read it).

    In: the iterate xn, the one before it x and the gradient there gp, the momentum beta
    (0 or 1) that made xn and, for the restart test, dd = |xn - x|^2 and dpd =
    (x - x_before).(xn - x) (dd < 0: the first accelerated call). Out: ok (KKT violation
    at xn <= tol); for rows not ok, x becomes the next iterate prox(y - gam g(y)) at
    y = xn + beta' (xn - x) (g(y) the same combination of the gradients), gp becomes
    g(xn), dd and dpd those of the next iterate, and nz[j] says whether some next
    iterate is non-zero in column j. beta' is 1, or 0 after O'Donoghue and Candes'
    restart test (y - xn).(xn - x) > 0, written as beta dpd > dd so that y is never
    formed. Safeguard: d0 is the first accelerated step's dd, and a later step at least
    as long shrinks the row's step gam by ``shrink``, down to ``min_step``.

    Pass 1 over a row reads gx, xn (gradient, KKT); pass 2 re-reads them from cache
    and reads and writes x and gp: six streams over memory per iteration in all.
    Without ``accelerate`` it is a plain proximal gradient step of length ``step``,
    and pass 2 only writes x (gp, gam, beta, dd, dpd and d0 are left alone; the first
    accelerated call must find dd < 0).
    """
    rows, n = gx.shape
    one = step / step
    zero = step - step
    nz[:] = False
    for i in range(rows):
        if not pending[i]:
            continue
        la = lam[i]
        viol = zero
        for j in range(n):
            v = xn[i, j]
            g = gx[i, j] + l2 * v
            s = np.sign(v)
            if nonneg:  # h = g + lam: |h| on the support, -h off it
                h = g + la
                k = max(-h, h * (s + s - one))
            else:  # |g + lam s| on the support, |g| - lam off it
                k = abs(g + la * s) - la + la * abs(s)
            viol = max(viol, k)
        ok[i] = viol <= tol[i]
        if ok[i]:  # done: the next iterate is not needed
            continue
        if not accelerate:
            th = la * step
            for j in range(n):
                v = xn[i, j]
                z = v - step * (gx[i, j] + l2 * v)
                xnext = max(z - th, zero) if nonneg else z - min(max(z, -th), th)
                x[i, j] = xnext
                nz[j] |= xnext != 0
            continue
        if dd[i] >= 0:  # the step that made xn was accelerated
            if d0[i] < 0:
                d0[i] = dd[i]
            elif dd[i] >= d0[i]:
                gam[i] = max(gam[i] * shrink, min_step)
        b = zero if beta[i] * dpd[i] > dd[i] else one  # restart: always at the first accelerated call
        beta[i] = b
        st = gam[i]
        th = la * st
        dd_next = 0.0
        dpd_next = 0.0
        for j in range(n):
            v = xn[i, j]
            xo = x[i, j]
            g = gx[i, j] + l2 * v
            z = v + b * (v - xo) - st * (g + b * (g - gp[i, j]))
            gp[i, j] = g
            if nonneg:
                xnext = max(z - th, zero)
            else:
                xnext = z - min(max(z, -th), th)
            d = xnext - v
            dd_next += d * d
            dpd_next += (v - xo) * d
            x[i, j] = xnext
            nz[j] |= xnext != 0
        dd[i], dpd[i] = dd_next, dpd_next


@nb.njit(cache=True, nogil=True)
def transpose_into(src, dst):  # pragma: no cover
    """dst = src.T for any strides of src, in 32 x 32 blocks (cache-friendly, unlike element by element)."""
    n, t = src.shape
    for j0 in range(0, n, 32):
        for i0 in range(0, t, 32):
            for j in range(j0, min(j0 + 32, n)):
                for i in range(i0, min(i0 + 32, t)):
                    dst[i, j] = src[j, i]


@nb.njit(cache=True, nogil=True)
def store_transposed(src, rows, cols, dst, add=None):  # pragma: no cover
    """dst[:, cols[r]] = src[rows[r], :] (+ add[rows[r], :]) for each r (target-major rows into [n, T])."""
    n = src.shape[1]
    for j0 in range(0, n, 64):
        for r in range(rows.size):
            i, col = rows[r], cols[r]
            if add is None:
                for j in range(j0, min(j0 + 64, n)):
                    dst[j, col] = src[i, j]
            else:
                for j in range(j0, min(j0 + 64, n)):
                    dst[j, col] = src[i, j] + add[i, j]


@nb.njit(cache=True, nogil=True)
def store_rows(src, rows, cols, dst, add=None):  # pragma: no cover
    """dst[cols[r]] = src[rows[r]] (+ add[rows[r]]) for each r (rows into target-major [T, n])."""
    for r in range(rows.size):
        i, col = rows[r], cols[r]
        if add is None:
            dst[col, :] = src[i, :]
        else:
            for j in range(src.shape[1]):
                dst[col, j] = src[i, j] + add[i, j]


@nb.njit(cache=True, nogil=True)
def move_rows(a, dst, src):  # pragma: no cover
    """a[dst[r]] = a[src[r]] for each r: rows from the end of the batch fill the places of finished ones."""
    for r in range(dst.size):
        a[dst[r], :] = a[src[r], :]


@nb.njit(cache=True, nogil=True)
def gather_columns(src, cols, dst):  # pragma: no cover
    """dst[:, r] = src[:, cols[r]]."""
    for i in range(src.shape[0]):
        for r in range(cols.size):
            dst[i, r] = src[i, cols[r]]
