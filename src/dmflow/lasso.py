"""Lasso solvers on sufficient statistics (Gram form), batched over targets.

Both solvers minimise, per target t, the DESIGN objective

    (1/2m) ||X w + b - y||^2 + lam ||w||_1  [+ (l2/2) ||w||^2]  [w >= 0]

with b unpenalised. Eliminating b (b = ybar - xbar . w) leaves, in terms of the
column-centred statistics G = Xc^T Xc / m, c = Xc^T yc / m, yy = ||yc||^2 / m,

    0.5 w^T G w - c^T w + 0.5 yy + lam ||w||_1 ...

so neither solver needs the masks themselves, only (G, c, yy). Weights are in the
raw 0/1 mask coordinates; only the intercept uses the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Moments:
    """Centred sums of a set of rows: count, means, Xc^T Xc, Xc^T Yc and ||Yc||^2 (float64)."""

    count: int
    mean_x: torch.Tensor  # [n]
    mean_y: torch.Tensor  # [T]
    sxx: torch.Tensor  # [n, n]
    sxy: torch.Tensor  # [n, T]
    syy: torch.Tensor  # [T]

    def combine(self, other: "Moments") -> "Moments":
        """The moments of the union of two disjoint row sets (Chan et al.'s pairwise update)."""
        n = self.count + other.count
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        f = self.count * other.count / n
        return Moments(
            n,
            self.mean_x + dx * other.count / n,
            self.mean_y + dy * other.count / n,
            self.sxx + other.sxx + f * torch.outer(dx, dx),
            self.sxy + other.sxy + f * torch.outer(dx, dy),
            self.syy + other.syy + f * dy * dy,
        )

    def select(self, targets: torch.Tensor) -> "Moments":
        """The same rows, restricted to some targets."""
        return Moments(self.count, self.mean_x, self.mean_y[targets], self.sxx, self.sxy[:, targets], self.syy[targets])

    def gram(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G, c, yy) of the centred problem, per row, in ``dtype``."""
        m = self.count
        return (self.sxx / m).to(dtype), (self.sxy / m).to(dtype), (self.syy / m).to(dtype)


def row_moments(
    masks: np.ndarray,
    targets_y: np.ndarray,
    rows: np.ndarray,
    block_rows: int = 4096,
    device: str = "cpu",
) -> Moments:
    """Moments of ``rows`` of (masks, y), read in row blocks (masks may be a memmap).

    Two passes (means, then centred products) avoid the cancellation of raw sums; at
    most ``block_rows`` rows are in memory at once, as float64.
    """
    rows = np.sort(np.asarray(rows))
    n, t = masks.shape[1], targets_y.shape[1]
    f64 = dict(dtype=torch.float64, device=device)
    sum_x, sum_y = torch.zeros(n, **f64), torch.zeros(t, **f64)
    for start in range(0, len(rows), block_rows):
        r = rows[start : start + block_rows]
        sum_x += torch.as_tensor(masks[r], **f64).sum(0)
        sum_y += torch.as_tensor(targets_y[r], **f64).sum(0)
    m = len(rows)
    mean_x, mean_y = sum_x / m, sum_y / m
    sxx, sxy, syy = torch.zeros(n, n, **f64), torch.zeros(n, t, **f64), torch.zeros(t, **f64)
    for start in range(0, len(rows), block_rows):
        r = rows[start : start + block_rows]
        xb = torch.as_tensor(masks[r], **f64) - mean_x
        yb = torch.as_tensor(targets_y[r], **f64) - mean_y
        sxx += xb.T @ xb
        sxy += xb.T @ yb
        syy += (yb * yb).sum(0)
    return Moments(m, mean_x, mean_y, sxx, sxy, syy)


def lambda_max(c: torch.Tensor, nonneg: bool = False) -> torch.Tensor:
    """Smallest lam with the all-zero solution, per target: ||c||_inf (max(c, 0) if w >= 0)."""
    return c.clamp(min=0).amax(0) if nonneg else c.abs().amax(0)


def lambda_path(lam_max: torch.Tensor, num: int, min_ratio: float) -> torch.Tensor:
    """[num, T] geometric grid from lam_max down to lam_max * min_ratio."""
    if num == 1:
        return lam_max.unsqueeze(0).clone()
    exponents = torch.linspace(0, 1, num, dtype=lam_max.dtype, device=lam_max.device)
    return lam_max.unsqueeze(0) * (min_ratio ** exponents).unsqueeze(1)


def lipschitz(gram: torch.Tensor) -> float:
    """Largest eigenvalue of the Gram matrix (step size 1/L), with a small safety margin."""
    if gram.shape[0] <= 4096:
        top = torch.linalg.eigvalsh(gram.double())[-1].item()
    else:
        # power iteration from a fixed start (reproducible); it approaches the top
        # eigenvalue from below, hence the larger safety margin
        gen = torch.Generator(device=gram.device).manual_seed(0)
        v = torch.randn(gram.shape[0], dtype=gram.dtype, device=gram.device, generator=gen)
        for _ in range(300):
            v = gram @ v
            v = v / v.norm()
        return max((v @ (gram @ v)).item(), 1e-12) * 1.05
    return max(top, 1e-12) * 1.01


def prox(z: torch.Tensor, thresh: torch.Tensor, nonneg: bool) -> torch.Tensor:
    """Proximal map of thresh*||w||_1 (restricted to w >= 0 if asked), elementwise."""
    return (z - thresh).clamp(min=0) if nonneg else torch.sign(z) * (z.abs() - thresh).clamp(min=0)


def kkt_violation(
    gram: torch.Tensor, c: torch.Tensor, w: torch.Tensor, lam: torch.Tensor, l2: float, nonneg: bool
) -> torch.Tensor:
    """Per-target max violation of the optimality conditions (0 at the exact solution)."""
    g = gram @ w - c + l2 * w
    nz = w != 0
    on_support = (g + lam * torch.sign(w)).abs()
    off = (-g - lam).clamp(min=0) if nonneg else (g.abs() - lam).clamp(min=0)
    return torch.where(nz, on_support, off).amax(0)


def _gram_times(gram: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """G @ y, using only the rows where some target has a non-zero weight (sparse paths)."""
    support = (y != 0).any(1)
    count = int(support.sum())
    if count == 0:
        return torch.zeros_like(y)
    if count > gram.shape[0] // 2:
        return gram @ y
    idx = support.nonzero().squeeze(1)
    return gram.index_select(1, idx) @ y.index_select(0, idx)


@dataclass
class SolveResult:
    weight: torch.Tensor  # [n, T]
    iterations: torch.Tensor  # [T] int
    converged: torch.Tensor  # [T] bool


def solve_batched(
    gram: torch.Tensor,
    c: torch.Tensor,
    lam: torch.Tensor,
    w0: torch.Tensor | None = None,
    l2: float = 0.0,
    nonneg: bool = False,
    tol: float = 1e-6,
    max_iter: int = 2000,
    lip: float | None = None,
    scale: torch.Tensor | None = None,
    check_every: int = 5,
) -> SolveResult:
    """Accelerated proximal gradient (FISTA with adaptive restart) for all targets at once.

    The l2 term belongs to the smooth part (``lip`` must include it). Each target
    has its own lam; a target stops when its KKT violation is at most
    ``tol * scale`` (scale defaults to lambda_max) and then leaves the active set,
    so the matrix products shrink as targets converge.
    """
    n, t = c.shape
    lip = lipschitz(gram) + l2 if lip is None else lip
    scale = lambda_max(c, nonneg).clamp(min=1e-30) if scale is None else scale
    w = torch.zeros_like(c) if w0 is None else w0.clone()
    iterations = torch.zeros(t, dtype=torch.long, device=c.device)
    converged = torch.zeros(t, dtype=torch.bool, device=c.device)
    active = torch.arange(t, device=c.device)
    kkt = kkt_violation(gram, c, w, lam, l2, nonneg)
    done = kkt <= tol * scale
    converged |= done
    active = active[~done]
    x = w[:, active]
    y = x.clone()
    mom = torch.ones(active.numel(), dtype=c.dtype, device=c.device)
    it = 0
    while active.numel() and it < max_iter:
        ca, la = c[:, active], lam[active]
        for _ in range(check_every):
            g = _gram_times(gram, y) - ca + l2 * y
            x_new = prox(y - g / lip, la / lip, nonneg)
            mom_new = (1 + torch.sqrt(1 + 4 * mom * mom)) / 2
            restart = ((y - x_new) * (x_new - x)).sum(0) > 0
            beta = torch.where(restart, torch.zeros_like(mom), (mom - 1) / mom_new)
            y = x_new + beta * (x_new - x)
            mom = torch.where(restart, torch.ones_like(mom), mom_new)
            x = x_new
        it += check_every
        w[:, active] = x
        iterations[active] = it
        kkt = kkt_violation(gram, ca, x, la, l2, nonneg)
        done = kkt <= tol * scale[active]
        if done.any():
            converged[active[done]] = True
            keep = ~done
            active, x, y, mom = active[keep], x[:, keep], y[:, keep], mom[keep]
    return SolveResult(w, iterations, converged)


def mse_from_moments(gram: torch.Tensor, c: torch.Tensor, yy: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-target mean squared residual (1/m)||Xw+b-y||^2 at the best b, from the moments."""
    return (w * (gram @ w)).sum(0) - 2 * (c * w).sum(0) + yy


def objective(
    gram: torch.Tensor, c: torch.Tensor, yy: torch.Tensor, w: torch.Tensor, lam: torch.Tensor, l2: float = 0.0
) -> torch.Tensor:
    """Per-target value of the full objective (1/2m)||Xw+b-y||^2 + lam||w||_1 + (l2/2)||w||^2 at the best b."""
    return 0.5 * mse_from_moments(gram, c, yy, w) + lam * w.abs().sum(0) + 0.5 * l2 * (w * w).sum(0)


CLARABEL_TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10, "max_iter": 500}


def solve_cvxpy(
    gram: np.ndarray,
    c: np.ndarray,
    lam: np.ndarray,
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
