"""The batched solver as a plain torch loop: the reference, the backend on CUDA, and the
per-target solver of the working-set path.

``dmflow.lasso.solvers.solve_batched`` documents the method; the fused CPU backend
(``dmflow.lasso.fused``) takes the same iterates up to rounding, and the tests hold the
two to it. ``proximal_loop`` runs the iterations for one Gram shared by all targets
(``SharedGram``) or one Gram per target (``PaddedGrams``: each target's own working set).
"""

from __future__ import annotations

import torch

from dmflow.lasso.problem import GREEDY_SHRINK, PLAIN_STEPS, SolveResult, kkt_from_grad, lambda_max


def _support_rows(w: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows where some target has a non-zero weight; None if over half are."""
    idx = w.abs().amax(1).nonzero().squeeze(1)
    return None if idx.numel() > w.shape[0] // 2 else idx


class SharedGram:
    """One Gram G [n, n] for all targets; x [n, t] (t targets' columns)."""

    sparse_rows = True

    def __init__(self, gram: torch.Tensor) -> None:
        self.gram = gram

    def gradient(
        self, w: torch.Tensor, neg_c: torch.Tensor, l2: float, *, rows: torch.Tensor | None, cols: torch.Tensor
    ) -> torch.Tensor:
        """G w + l2 w - c, the smooth part's gradient, with the -c folded into the matrix product.

        With ``rows`` (a superset of w's non-zero rows) only those columns of G take part.
        """
        if rows is None:
            g = torch.addmm(neg_c, self.gram, w)
        elif rows.numel() == 0:
            g = neg_c.clone()
        else:
            g = torch.addmm(neg_c, self.gram.index_select(1, rows), w.index_select(0, rows))
        return g.add_(w, alpha=l2) if l2 else g


class PaddedGrams:
    """One Gram per target, padded to a common size: grams [T, K, K]; x [K, t] holds targets ``cols``.

    A target whose working set is smaller than K has zero rows and columns (and a zero c)
    there, which keep its weights at zero.
    """

    sparse_rows = False

    def __init__(self, grams: torch.Tensor) -> None:
        self.grams = grams
        self._cols: torch.Tensor | None = None  # the targets ``self.grams`` holds now: all, until the loop compacts

    def gradient(
        self, w: torch.Tensor, neg_c: torch.Tensor, l2: float, *, rows: torch.Tensor | None, cols: torch.Tensor
    ) -> torch.Tensor:
        if self._cols is None or not torch.equal(self._cols, cols):  # the batch shrank: keep only its Grams
            self.grams = (
                self.grams
                if self._cols is None and len(cols) == len(self.grams)
                else self.grams[torch.searchsorted(self._cols, cols) if self._cols is not None else cols]
            )
            self._cols = cols
        g = torch.baddbmm(neg_c.T.unsqueeze(-1), self.grams, w.T.unsqueeze(-1)).squeeze(-1).T
        return g.add_(w, alpha=l2) if l2 else g


def _gram_part(g: torch.Tensor, neg_c: torch.Tensor, w: torch.Tensor, l2: float) -> torch.Tensor:
    """G w, recovered from the gradient g = G w + l2 w - c."""
    gw = g - neg_c
    return gw.sub_(w, alpha=l2) if l2 else gw


def solve_torch(
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
    """``solve_batched`` as torch operations over [n, T] (any device)."""
    return proximal_loop(
        SharedGram(gram),
        c,
        lam,
        w0=w0,
        l2=l2,
        nonneg=nonneg,
        tol=tol,
        scale=scale,
        max_iter=max_iter,
        steps=steps,
        gram_w0=gram_w0,
    )


def proximal_loop(
    op: SharedGram | PaddedGrams,
    c: torch.Tensor,
    lam: torch.Tensor,
    *,
    w0: torch.Tensor | None,
    l2: float,
    nonneg: bool,
    tol: float,
    scale: torch.Tensor | None,
    max_iter: int,
    steps: tuple[float | torch.Tensor, float | torch.Tensor, float | torch.Tensor],
    gram_w0: torch.Tensor | None,
) -> SolveResult:
    """The iterations of ``solve_batched`` (plain steps, then greedy FISTA, KKT stopping) for any Gram operator.

    ``op`` forms the gradients (one shared Gram, or one per target); ``steps`` (plain,
    greedy from, down to) are floats or, with a Gram per target, tensors [T]. Converged
    targets leave the batch once an eighth of it has finished, as each removal copies
    the iterates.
    """
    t = c.shape[1]
    device = c.device
    s_plain, s_greedy, s_min = (torch.as_tensor(v, dtype=c.dtype, device=device).expand(t).clone() for v in steps)
    scale = lambda_max(c, nonneg).clamp(min=1e-30) if scale is None else scale
    w = torch.zeros_like(c) if w0 is None else w0.clone()
    iterations = torch.zeros(t, dtype=torch.long, device=device)
    converged = torch.zeros(t, dtype=torch.bool, device=device)
    every = torch.arange(t, device=device)
    rows = _support_rows(w) if op.sparse_rows else None
    if gram_w0 is None:
        g = op.gradient(w, -c, l2, rows=rows, cols=every)
        gw = _gram_part(g, -c, w, l2)
    else:
        gw = gram_w0.clone()
        g = (gram_w0 - c).add_(w, alpha=l2) if l2 else gram_w0 - c
    done = kkt_from_grad(g, w, lam, nonneg=nonneg) <= tol * scale
    converged |= done
    active = (~done).nonzero().squeeze(1)
    x, g = w.index_select(1, active), g.index_select(1, active)
    x_prev, g_prev = x, g
    neg_c, la, tol_a = -c.index_select(1, active), lam[active], tol * scale[active]
    s_plain, s_min = s_plain[active], s_min[active]
    beta = torch.zeros(active.numel(), dtype=c.dtype, device=device)
    gam = s_greedy[active]  # greedy FISTA's step, per target
    d0 = torch.full_like(beta, -1.0)  # its first step's squared length (-1: not taken yet)
    pending = torch.ones(active.numel(), dtype=torch.bool, device=device)  # not yet converged
    it = 0
    while active.numel() and it < max_iter:
        accelerate = it >= PLAIN_STEPS
        step = gam if accelerate else s_plain
        weight = 1 + beta  # y = x + beta (x - x_prev), and likewise its gradient
        y = torch.lerp(x_prev, x, weight)
        z = torch.lerp(g_prev, g, weight).mul_(-step).add_(y)  # y - step * g(y)
        thresh = la * step
        x_new = (z - thresh).clamp_(min=0) if nonneg else z.sub_(z.clamp(-thresh, thresh))
        if rows is not None:  # sparse so far: find the rows the product needs
            rows = _support_rows(x_new)
        g_new = op.gradient(x_new, neg_c, l2, rows=rows, cols=active)
        it += 1
        if accelerate:  # before, beta stays 0 and y = x
            restart = torch.linalg.vecdot(y.sub_(x_new), x_new - x, dim=0) > 0
            beta = (~restart).to(beta.dtype)
            dd = torch.linalg.vecdot(x_new - x, x_new - x, dim=0)
            gam = torch.where((d0 >= 0) & (dd >= d0), torch.maximum(gam * GREEDY_SHRINK, s_min), gam)
            d0 = torch.where(d0 < 0, dd, d0)
        x_prev, g_prev, x, g = x, g, x_new, g_new
        ok = kkt_from_grad(g, x, la, nonneg=nonneg) <= tol_a
        newly = pending if it >= max_iter else ok & pending
        if newly.any():  # record them now; they leave the batch at the next compaction
            local = newly.nonzero().squeeze(1)
            w[:, active[local]] = x.index_select(1, local)
            gw[:, active[local]] = _gram_part(*(v.index_select(1, local) for v in (g, neg_c, x)), l2)
            iterations[active[local]] = it
            converged[active[local]] = ok[local]
            pending &= ~newly
            finished = pending.numel() - int(pending.sum())
            if 8 * finished >= pending.numel():  # compacting copies 4 [n, active] tensors
                keep = pending.nonzero().squeeze(1)
                active, pending = active[keep], pending[keep]
                x, g, x_prev, g_prev, neg_c = (v.index_select(1, keep) for v in (x, g, x_prev, g_prev, neg_c))
                la, tol_a, beta, gam, d0 = la[keep], tol_a[keep], beta[keep], gam[keep], d0[keep]
                s_plain, s_min = s_plain[keep], s_min[keep]
    return SolveResult(w, iterations, converged, gw)
