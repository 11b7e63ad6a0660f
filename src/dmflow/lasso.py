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

import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def curvature(gram: torch.Tensor, l2: float = 0.0) -> tuple[float, float]:
    """(L, mu): the largest eigenvalue of the Gram matrix, with a small safety margin
    (the step size), and its smallest eigenvalue that is not ~0 (the convergence rate),
    both + ``l2`` (the elastic-net term belongs to the smooth part).

    The gradient G w - c always lies in the range of G (c = Xc^T yc / m does), so the
    null directions of G (with fixed-size masks, the all-ones vector) carry no
    gradient and do not limit the rate: mu skips eigenvalues below 1e-6 L. Past 4096
    features L comes from power iteration and mu is not computed (0.0).
    """
    if gram.shape[0] <= 4096:
        evals = torch.linalg.eigvalsh(gram.double())
        top = max(evals[-1].item(), 1e-12)
        positive = evals[evals > 1e-6 * top]
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
# as long as its first one. Counted in full-size matrix products per target over the
# default store's path (797 targets x 30 lambdas, float32): FISTA (step 1/L, restarts)
# alone 259, plain steps alone 196, 5 plain then FISTA 187, 5 plain then greedy 173;
# on the store's first 6k / 3k rows (L/mu 5.6 / 14, float64): FISTA 397 / 556, plain
# 345 / 641, plain then FISTA 321 / 522, plain then greedy 297 / 466. Plain steps alone
# are slow at the dense end of the path, where G restricted to the support is nearly
# as ill-conditioned as G; FISTA's own momentum schedule with the longer step diverged
# on the 3k rows.
PLAIN_STEPS = 5
GREEDY_STEP, GREEDY_SHRINK = 1.3, 0.96  # greedy FISTA's first step (x 1/L) and its safeguard factor


def plain_step(lip: float, mu: float) -> float:
    """The step of the plain iterations: 2/(L + mu), or 1/L when mu is unknown (0).

    2/(L + mu) minimises the worst contraction |1 - step * eig| over the spectrum, and
    any step below 2/L is safe for plain proximal gradient. While a
    target's support is small, G restricted to it has a narrow spectrum around the
    diagonal and the long step nearly solves it: the early lambdas of a path take
    ~5 plain iterations where FISTA takes ~9.
    """
    return 2.0 / (lip + mu) if mu > 0 else 1.0 / lip


def prox(z: torch.Tensor, thresh: torch.Tensor, nonneg: bool) -> torch.Tensor:
    """Proximal map of thresh*||w||_1 (restricted to w >= 0 if asked), elementwise."""
    return (z - thresh).clamp(min=0) if nonneg else torch.sign(z) * (z.abs() - thresh).clamp(min=0)


def _kkt_from_grad(g: torch.Tensor, w: torch.Tensor, lam: torch.Tensor, nonneg: bool) -> torch.Tensor:
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
    gram: torch.Tensor, c: torch.Tensor, w: torch.Tensor, lam: torch.Tensor, l2: float, nonneg: bool
) -> torch.Tensor:
    """Per-target max violation of the optimality conditions (0 at the exact solution)."""
    return _kkt_from_grad(gram @ w - c + l2 * w, w, lam, nonneg)


def _support_rows(w: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows where some target has a non-zero weight; None if over half are."""
    idx = w.abs().amax(1).nonzero().squeeze(1)
    return None if idx.numel() > w.shape[0] // 2 else idx


def _gradient(
    gram: torch.Tensor, w: torch.Tensor, neg_c: torch.Tensor, l2: float, rows: torch.Tensor | None
) -> torch.Tensor:
    """G w + l2 w - c, the smooth part's gradient, with the -c folded into the matrix product.

    With ``rows`` (a superset of w's non-zero rows) only those columns of G take part.
    """
    if rows is None:
        g = torch.addmm(neg_c, gram, w)
    elif rows.numel() == 0:
        g = neg_c.clone()
    else:
        g = torch.addmm(neg_c, gram.index_select(1, rows), w.index_select(0, rows))
    return g.add_(w, alpha=l2) if l2 else g


def _gram_part(g: torch.Tensor, neg_c: torch.Tensor, w: torch.Tensor, l2: float) -> torch.Tensor:
    """G w, recovered from the gradient g = G w + l2 w - c."""
    gw = g - neg_c
    return gw.sub_(w, alpha=l2) if l2 else gw


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run the elementwise part of an iteration on one CPU thread, then restore the count.

    Each elementwise pass over [n, T] takes ~0.5 ms on one core; split over threads on a
    busy machine it waits for the other core at every pass (measured ~10 ms per pass at
    load 5 on 2 cores). The matrix products keep all threads.
    """
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class SolveResult:
    weight: torch.Tensor  # [n, T]
    iterations: torch.Tensor  # [T] int
    converged: torch.Tensor  # [T] bool
    gram_weight: torch.Tensor  # [n, T]: G @ weight, from the product the solver made there


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
    mu: float = 0.0,
    scale: torch.Tensor | None = None,
    backend: str = "auto",
    gram_w0: torch.Tensor | None = None,
) -> SolveResult:
    """Proximal gradient for all targets at once: ``PLAIN_STEPS`` plain steps, then greedy FISTA.

    ``lip`` and ``mu`` bound the spectrum of G (``curvature``; both must include the
    l2 term, which belongs to the smooth part; without ``lip`` both are computed
    here): the plain steps are 2/(L + mu) long (``plain_step``), greedy FISTA's start at
    1.3/L and shrink towards 1/L (see ``PLAIN_STEPS``). Each target
    has its own lam; a target stops when its KKT violation is at most
    ``tol * scale`` (scale defaults to lambda_max): its weights are recorded at that
    iterate, and it leaves the batch (in the torch loop once an eighth of the batch has
    finished, as each removal copies the iterates; in the fused one at once), so the
    matrix products shrink as targets converge.

    One matrix product per iteration: the gradient g(x) = G x + l2 x - c is kept for
    the iterates x, and the gradient at the extrapolated point y = x + beta (x - x_prev)
    is the same affine combination of g(x) and g(x_prev). So the KKT test at every
    iterate costs no product, and the restart test (O'Donoghue and Candes' gradient
    scheme: (y - x_new) . (x_new - x) > 0) none either. The result carries G @ weight,
    and ``gram_w0`` = G @ w0, when the caller knows it, replaces the first product:
    along a path the warm start is a combination of earlier solutions
    (``path_warm_start``), so its product is the same combination of theirs.

    ``backend``: "torch" (any device), "fused" (CPU, float32/64: the same iterates,
    up to rounding, from numba kernels that make two passes over each target's row
    per iteration where torch makes ~17 over the batch; 1.6x as fast per iteration at
    the default run's size) or "auto" (fused where it applies).
    """
    n, t = c.shape
    device = c.device
    if lip is None:
        lip, mu = curvature(gram, l2)
    steps = (plain_step(lip, mu), GREEDY_STEP / lip, 1.0 / lip)  # plain; greedy from, down to
    if backend not in ("auto", "torch", "fused"):
        raise ValueError(f"unknown backend {backend!r}")
    fused_ok = device.type == "cpu" and c.dtype in (torch.float32, torch.float64) and _numba_kernels() is not None
    if backend == "fused" and not fused_ok:
        raise ValueError("the fused backend needs float32/float64 CPU tensors and numba")
    if backend != "torch" and fused_ok:
        return _solve_fused(gram.to(c.dtype).contiguous(), c, lam, w0, l2, nonneg, tol, scale, max_iter, steps, gram_w0)
    scale = lambda_max(c, nonneg).clamp(min=1e-30) if scale is None else scale
    w = torch.zeros_like(c) if w0 is None else w0.clone()
    iterations = torch.zeros(t, dtype=torch.long, device=device)
    converged = torch.zeros(t, dtype=torch.bool, device=device)
    with _one_thread(device):
        rows = _support_rows(w)
    if gram_w0 is None:
        g = _gradient(gram, w, -c, l2, rows)
        gw = _gram_part(g, -c, w, l2)
    else:
        gw = gram_w0.clone()
        g = (gram_w0 - c).add_(w, alpha=l2) if l2 else gram_w0 - c
    with _one_thread(device):
        done = _kkt_from_grad(g, w, lam, nonneg) <= tol * scale
    converged |= done
    active = (~done).nonzero().squeeze(1)
    x, g = w.index_select(1, active), g.index_select(1, active)
    x_prev, g_prev = x, g
    neg_c, la, tol_a = -c.index_select(1, active), lam[active], tol * scale[active]
    beta = torch.zeros(active.numel(), dtype=c.dtype, device=device)
    gam = torch.full_like(beta, steps[1])  # greedy FISTA's step, per target
    d0 = torch.full_like(beta, -1.0)  # its first step's squared length (-1: not taken yet)
    pending = torch.ones(active.numel(), dtype=torch.bool, device=device)  # not yet converged
    it = 0
    while active.numel() and it < max_iter:
        accelerate = it >= PLAIN_STEPS
        step = gam if accelerate else steps[0]
        with _one_thread(device):
            weight = 1 + beta  # y = x + beta (x - x_prev), and likewise its gradient
            y = torch.lerp(x_prev, x, weight)
            z = torch.lerp(g_prev, g, weight).mul_(-step).add_(y)  # y - step * g(y)
            thresh = la * step
            x_new = (z - thresh).clamp_(min=0) if nonneg else z.sub_(z.clamp(-thresh, thresh))
            if rows is not None:  # sparse so far: find the rows the product needs
                rows = _support_rows(x_new)
        g_new = _gradient(gram, x_new, neg_c, l2, rows)
        it += 1
        with _one_thread(device):
            if accelerate:  # before, beta stays 0 and y = x
                restart = torch.linalg.vecdot(y.sub_(x_new), x_new - x, dim=0) > 0
                beta = (~restart).to(beta.dtype)
                dd = torch.linalg.vecdot(x_new - x, x_new - x, dim=0)
                gam = torch.where((d0 >= 0) & (dd >= d0), (gam * GREEDY_SHRINK).clamp(min=steps[2]), gam)
                d0 = torch.where(d0 < 0, dd, d0)
            x_prev, g_prev, x, g = x, g, x_new, g_new
            ok = _kkt_from_grad(g, x, la, nonneg) <= tol_a
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
    return SolveResult(w, iterations, converged, gw)


def _numba_kernels():
    """The fused CPU kernels (module ``_lasso_kernels``), or None without numba."""
    try:
        from dmflow import _lasso_kernels
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return _lasso_kernels


def warm_up_fused() -> float:
    """Compile (or load from numba's on-disk cache) the fused kernels, float32 and float64; seconds taken.

    A process pays this once, at its first fused solve: a few seconds of compilation
    on a fresh install, a fraction of a second from the cache after that. Benchmarks
    call it first so that it is reported on its own rather than inside a timing.
    """
    if _numba_kernels() is None:
        return 0.0
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(16, 8, dtype=dtype, generator=gen)
        gram, c = a.T @ a / 16, torch.randn(8, 6, dtype=dtype, generator=gen)
        lam = lambda_max(c) * torch.linspace(0.9, 0.05, 6, dtype=dtype)
        w0 = torch.zeros_like(c)
        w0[2] = 0.1  # one non-zero row: the sparse product and its gather
        for cc, start_w in ((c, None), (c, w0), (c, w0.T.contiguous().T), (c.T.contiguous().T, w0.T.contiguous().T)):
            solve_batched(gram, cc, lam, w0=start_w, max_iter=50, backend="fused")  # feature- and target-major
    return time.perf_counter() - start


def _solve_fused(
    gram: torch.Tensor,
    c: torch.Tensor,
    lam: torch.Tensor,
    w0: torch.Tensor | None,
    l2: float,
    nonneg: bool,
    tol: float,
    scale: torch.Tensor | None,
    max_iter: int,
    steps: tuple[float, float, float],
    gram_w0: torch.Tensor | None = None,
) -> SolveResult:
    """``solve_batched`` on CPU with the numba kernels, in the target-major layout [T, n].

    The same iterates as the torch loop (up to rounding): iterate k's gradient comes
    from one matrix product (x_k @ G - c, G symmetric; the product subtracts c, so the
    kernel reads one array less), then one kernel call tests the KKT conditions at x_k
    and computes x_{k+1}. A target that finishes leaves the batch at once: the last
    pending rows move into its place (a copy of as many rows as finished). All data
    movement (transposes in and out, those moves, the sparse product's gather) is
    single-threaded numba too: torch's threaded copies waited for the busy second core. Inputs that are already
    target-major (``c.T`` contiguous, as ``fit_targets`` keeps them along a path) are
    copied without a transpose, and the weights come back in the layout of ``c``.
    """
    kern = _numba_kernels()
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
    ct, xn, x, gp, gx = (torch.from_numpy(f((t, n), dtype=np_dtype)) for f in (np.empty, np.empty, np.zeros,
                                                                                np.zeros, np.empty))
    _to_target_major(c, ct)
    if w0 is not None:
        _to_target_major(w0, xn)
        nz = (xn.numpy() != 0).any(0)  # numpy: 5x faster than torch's any over this axis
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
            kern.gather_columns(xn.numpy(), cols, xs.numpy())
            torch.addmm(ct, xs, gram_cols, beta=-1, out=gx)
        kern.prox_grad_step(
            gx.numpy(), xn.numpy(), x.numpy(), gp.numpy(), la.numpy(), tol_a.numpy(), gam.numpy(),
            beta.numpy(), dd.numpy(), dpd.numpy(), d0.numpy(), pending.numpy(), ok.numpy(), nz,
            np_dtype.type(steps[0]), np_dtype.type(steps[2]), np_dtype.type(GREEDY_SHRINK), l2_, nonneg,
            k >= PLAIN_STEPS,
        )
        newly = pending if k == max_iter else ok & pending
        if newly.any():  # record them, then the last rows of the batch take their places
            local = newly.nonzero().squeeze(1)
            rows_, cols_ = local.numpy(), active[local].numpy()
            if w.T.is_contiguous():
                kern.store_rows(xn.numpy(), rows_, cols_, w.T.numpy())
                kern.store_rows(gx.numpy(), rows_, cols_, gw.T.numpy(), ct.numpy())  # G @ w = gx + c
            else:
                kern.store_transposed(xn.numpy(), rows_, cols_, w.numpy())
                kern.store_transposed(gx.numpy(), rows_, cols_, gw.numpy(), ct.numpy())
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
                kern.move_rows(v.numpy(), holes.numpy(), movers.numpy())
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
        _numba_kernels().transpose_into(src.numpy(), dst.numpy())


def path_warm_start(
    w_prev: torch.Tensor, w: torch.Tensor, lam_prev: torch.Tensor, lam: torch.Tensor, lam_next: torch.Tensor
) -> torch.Tensor:
    """Start for lam_next on the line through the solutions at lam_prev and lam, per target.

    While the support and signs stay fixed the lasso solution is affine in lam, so
    this is exact there and much closer than ``w`` elsewhere: fewer iterations for
    the same KKT stopping rule (the solution itself does not depend on the start).
    """
    step = lam - lam_prev
    ratio = torch.where(step != 0, (lam_next - lam) / torch.where(step != 0, step, 1), 0)
    return torch.lerp(w, w_prev, -ratio)  # w + ratio (w - w_prev) in one pass


def mse_from_moments(
    gram: torch.Tensor, c: torch.Tensor, yy: torch.Tensor, w: torch.Tensor, gram_w: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-target mean squared residual (1/m)||Xw+b-y||^2 at the best b, from the moments
    (``gram_w`` = G @ w when known, e.g. from the solver)."""
    gram_w = gram @ w if gram_w is None else gram_w
    return (w * gram_w).sum(0) - 2 * (c * w).sum(0) + yy


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
