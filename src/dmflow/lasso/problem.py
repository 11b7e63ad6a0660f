"""The lasso problem every solver here solves, and what they share.

Per target t, the DESIGN objective

    (1/2m) ||X w + b - y||^2 + lam ||w||_1  [+ (l2/2) ||w||^2]  [w >= 0]

with b unpenalised. Eliminating b (b = ybar - xbar . w) leaves, in terms of the
column-centred statistics G = Xc^T Xc / m, c = Xc^T yc / m, yy = ||yc||^2 / m
(``dmflow.lasso.moments``),

    0.5 w^T G w - c^T w + 0.5 yy + lam ||w||_1 ...

so no solver needs the masks themselves, only (G, c, yy). Weights are in the raw
0/1 mask coordinates; only the intercept uses the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmflow.lasso.moments import CountMoments, Moments


def lambda_max(c: torch.Tensor, nonneg: bool = False) -> torch.Tensor:
    """Smallest lam with the all-zero solution, per target: ||c||_inf (max(c, 0) if w >= 0)."""
    return c.clamp(min=0).amax(0) if nonneg else c.abs().amax(0)


def constant_targets(moments: Moments | CountMoments) -> torch.Tensor | np.ndarray:
    """bool [T]: the targets whose margins do not vary over the moments' rows (up to rounding), a tensor for
    ``Moments`` and an array for ``CountMoments``: they get w = 0 and ``FLAG_CONSTANT``."""
    return moments.syy <= 1e-20 * moments.count * (1 + moments.mean_y**2)


NULL_SHARE = 1e-6
"""Eigenvalues of a Gram below this share of its largest are its null directions (``curvature``,
``moments.bottom_eigenvalue``)."""


def curvature(gram: torch.Tensor, l2: float = 0.0) -> tuple[float, float]:
    """(L, mu): the largest eigenvalue of the Gram matrix, with a small safety margin
    (the step size), and its smallest eigenvalue that is not ~0 (the convergence rate),
    both + ``l2`` (the elastic-net term belongs to the smooth part).

    The gradient G w - c always lies in the range of G (c = Xc^T yc / m does), so the
    null directions of G (with fixed-size masks, the all-ones vector) carry no
    gradient and do not limit the rate: mu skips eigenvalues below ``NULL_SHARE`` L. Past 4096
    features L comes from power iteration and mu is not computed (0.0).
    """
    if gram.shape[0] <= 4096:
        evals = torch.linalg.eigvalsh(gram.double())
        top = max(evals[-1].item(), 1e-12)
        positive = evals[evals > NULL_SHARE * top]
        return top * 1.01 + l2, positive[0].item() + l2 if positive.numel() else l2
    # power iteration from a fixed start (reproducible); it approaches the top
    # eigenvalue from below, hence the larger safety margin
    gen = torch.Generator(device=gram.device).manual_seed(0)
    v = torch.randn(gram.shape[0], dtype=gram.dtype, device=gram.device, generator=gen)
    for _ in range(300):
        v = gram @ v
        v = v / v.norm()
    return max((v @ (gram @ v)).item(), 1e-12) * 1.05 + l2, l2


# The first iterations of a solve are plain proximal gradient steps of length 2/(L + mu);
# then greedy FISTA takes over (Liang, Luo and Schoenlieb, "Improving FISTA: faster,
# smarter and greedier", 2018): momentum 1 with O'Donoghue and Candes' gradient
# restart, a step of 1.3/L, shrunk by 0.96 (down to 1/L) whenever a step is at least
# as long as its first one. Plain steps win while a target's support is small, momentum
# at the dense end of the path, where G restricted to the support is nearly as
# ill-conditioned as G; of the schemes counted, this one took the fewest matrix products
# (benchmarks/RESULTS.md). FISTA's own momentum schedule diverged at the longer step.
PLAIN_STEPS = 5
GREEDY_STEP, GREEDY_SHRINK = 1.3, 0.96  # greedy FISTA's first step (x 1/L) and its safeguard factor


def plain_step(lip: float, mu: float) -> float:
    """The step of the plain iterations: 2/(L + mu), or 1/L when mu is unknown (0).

    2/(L + mu) minimises the worst contraction |1 - step * eig| over the spectrum, and
    any step below 2/L is safe for plain proximal gradient. While a target's support
    is small, G restricted to it has a narrow spectrum around the diagonal and the
    long step nearly solves it.
    """
    return 2.0 / (lip + mu) if mu > 0 else 1.0 / lip


def kkt_from_grad(g: torch.Tensor, w: torch.Tensor, lam: torch.Tensor, *, nonneg: bool) -> torch.Tensor:
    """Per-target max KKT violation given the smooth part's gradient ``g`` at ``w``.

    On the support it is |g + lam sign(w)|; off it, how far g lies outside [-lam, lam]
    ([-lam, inf) if w >= 0). Written as arithmetic on sign(w) in {-1, 0, 1}, without
    boolean masks or ``where`` (several times slower on CPU), as it runs every iteration.
    """
    s = torch.sign(w)
    if nonneg:  # h = g + lam; on the support |h| = max(h, -h), off it max(-h, 0)
        h = g + lam
        return torch.maximum(-h, h * (2 * s - 1)).amax(0).clamp(min=0)
    h = torch.addcmul(g, s, lam).abs_().sub_(lam)  # |g + lam s| - lam
    return torch.addcmul(h, s.abs_(), lam).amax(0).clamp(min=0)  # + lam on the support


def kkt_violation(
    gram: torch.Tensor, c: torch.Tensor, w: torch.Tensor, *, lam: torch.Tensor, l2: float = 0.0, nonneg: bool = False
) -> torch.Tensor:
    """Per-target max violation of the optimality conditions (0 at the exact solution)."""
    return kkt_from_grad(gram @ w - c + l2 * w, w, lam, nonneg=nonneg)


@dataclass
class SolveResult:
    """What every backend returns, per target (columns)."""

    weight: torch.Tensor  # [n, T]
    iterations: torch.Tensor  # [T] int
    converged: torch.Tensor  # [T] bool
    gram_weight: torch.Tensor  # [n, T]: G @ weight, from the product the solver made there


def mse_from_moments(
    gram: torch.Tensor | None, c: torch.Tensor, yy: torch.Tensor, *, w: torch.Tensor, gram_w: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-target mean squared residual (1/m)||Xw+b-y||^2 at the best b, from the moments
    (``gram_w`` = G @ w when known, e.g. from the solver)."""
    gram_w = gram @ w if gram_w is None else gram_w
    return (w * gram_w).sum(0) - 2 * (c * w).sum(0) + yy


def objective(
    gram: torch.Tensor, c: torch.Tensor, yy: torch.Tensor, *, w: torch.Tensor, lam: torch.Tensor, l2: float = 0.0
) -> torch.Tensor:
    """Per-target value of the full objective (1/2m)||Xw+b-y||^2 + lam||w||_1 + (l2/2)||w||^2 at the best b."""
    return 0.5 * mse_from_moments(gram, c, yy, w=w) + lam * w.abs().sum(0) + 0.5 * l2 * (w * w).sum(0)
