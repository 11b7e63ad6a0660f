"""The lasso in cvxpy, one target at a time: the exact reference (and ``fit.solver: cvxpy``)."""

from __future__ import annotations

import numpy as np

CLARABEL_TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10, "max_iter": 500}


def solve_cvxpy(
    gram: np.ndarray,
    c: np.ndarray,
    lam: np.ndarray,
    *,
    l2: float = 0.0,
    nonneg: bool = False,
    solver: str = "CLARABEL",
    solver_options: dict | None = None,
) -> np.ndarray:
    """The same problem in cvxpy, one target at a time; lam [L, T] -> weights [L, n, T].

    The problem is compiled once with Parameters for c and lam and re-solved for every
    (lambda, target), warm-started where the backend supports it. G enters as F^T F
    with F = diag(sqrt(eig)) V^T, so cvxpy sees an exactly convex quadratic.
    CLARABEL runs with tight tolerances by default: with fixed-size masks the
    objective is flat along the all-ones direction, and default tolerances leave
    weight errors of ~1e-4 there.
    """
    import cvxpy as cp

    n, t = c.shape
    evals, evecs = np.linalg.eigh(gram)
    factor = np.sqrt(np.clip(evals, 0, None))[:, None] * evecs.T
    w = cp.Variable(n)
    c_par = cp.Parameter(n)
    lam_par = cp.Parameter(nonneg=True)
    expr = 0.5 * cp.sum_squares(factor @ w) - c_par @ w + lam_par * cp.norm1(w)
    if l2:
        expr = expr + 0.5 * l2 * cp.sum_squares(w)
    problem = cp.Problem(cp.Minimize(expr), [w >= 0] if nonneg else [])
    options = CLARABEL_TIGHT if solver_options is None and solver == "CLARABEL" else (solver_options or {})
    lam = np.atleast_2d(lam)
    out = np.zeros((lam.shape[0], n, t))
    for j in range(t):
        c_par.value = c[:, j]
        for i in range(lam.shape[0]):
            lam_par.value = float(lam[i, j])
            problem.solve(solver=solver, warm_start=True, **options)
            if w.value is None:
                raise RuntimeError(f"cvxpy ({solver}) failed on target {j}, lambda {lam[i, j]:.3g}: {problem.status}")
            out[i, :, j] = w.value
    return out
