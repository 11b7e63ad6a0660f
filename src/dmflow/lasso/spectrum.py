"""The ends of the spectrum of a centred Gram (``CountMoments``), by Lanczos iterations: the solvers' step
lengths, for every working set at once.
"""

from __future__ import annotations

import numpy as np
import torch

from dmflow.lasso.moments import CountMoments
from dmflow.lasso.problem import NULL_SHARE


def _operator(mom: CountMoments):
    """G = Xc^T Xc / count as a scipy ``LinearOperator``: one matrix-vector product per Gram in its stored
    float32, not float64 copies of it (the rounding, ~1e-7, is far below the tolerance 1e-4 and the solvers'
    1% margin), plus the rank-one shifts in float64."""
    from scipy.sparse.linalg import LinearOperator  # a heavy import, needed once per row set

    grams = mom._tensors()

    def matvec(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).ravel()
        v32 = torch.from_numpy(v.astype(np.float32))
        out = sum(torch.mv(g, v32) for g in grams).double().numpy()
        for coef, x in mom.shifts:
            out += coef * x * (x @ v)
        return out / mom.count

    return LinearOperator((mom.n, mom.n), matvec=matvec, dtype=np.float64)


def top_eigenvalue(mom: CountMoments) -> float:
    """The largest eigenvalue of G = Xc^T Xc / count, by Lanczos iterations (``scipy.sparse.linalg.eigsh``).

    By Cauchy's interlacing theorem it bounds the largest eigenvalue of every principal
    submatrix G[A, A]: one step size serves every working set. Lanczos approaches it from
    below; to a relative tolerance of 1e-3 (about half the products of 1e-4: benchmarks/RESULTS.md, "The lasso package's figures"),
    which the solvers' 1% margin (``dmflow.lasso.stored_gram.CentredGram``) covers.
    """
    from scipy.sparse.linalg import eigsh

    n = mom.n
    op = _operator(mom)
    return float(eigsh(op, k=1, which="LA", tol=1e-3, v0=np.ones(n) / np.sqrt(n), return_eigenvectors=False)[0])


def bottom_eigenvalue(mom: CountMoments, top: float) -> float:
    """The smallest eigenvalue of G = Xc^T Xc / count above ``NULL_SHARE`` x ``top``, within ~1%; 0.0 if
    the three smallest are all null.

    The solvers' plain steps are 2/(L + mu) long with it (``problem.plain_step``): fewer matrix
    products than 1/L (benchmarks/RESULTS.md, "The lasso package's figures"). The gradient lies in
    the range of G, so null directions (with fixed-size masks, the all-ones vector) do not
    limit the rate; and any mu in [0, L) gives a step below 2/L, which converges, so an
    estimate a little high (Lanczos approaches it from above) is safe. Lanczos
    (``eigsh``, which="SA") starts in the range of G; tiny G are solved exactly.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if top <= 0:  # G = 0
        return 0.0
    if mom.n <= 16:  # ARPACK needs k < n
        values = np.linalg.eigvalsh(mom.sxx(slice(None)) / mom.count)
    else:
        op = _operator(mom)
        start = op.matvec(np.random.default_rng(0).standard_normal(mom.n))
        try:
            values = eigsh(op, k=3, which="SA", tol=1e-2, v0=start, return_eigenvectors=False)
        except ArpackNoConvergence as err:  # pragma: no cover - the converged ones, maybe none
            values = err.eigenvalues.real
    positive = values[values > NULL_SHARE * top]
    return float(positive.min()) if positive.size else 0.0
