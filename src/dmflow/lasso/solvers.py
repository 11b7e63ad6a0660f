"""The batched lasso solver: one interface, a torch reference and a fused CPU backend.

``solve_batched`` solves one lambda per target for all targets of a block at once;
``dmflow.lasso.path`` runs it along each target's lambda path. ``solve_cvxpy``
(``dmflow.lasso.cvxpy_solver``) is the exact reference the tests compare with.
"""

from __future__ import annotations

import time

import torch

from dmflow.core.schema import defaults
from dmflow.lasso.fused import solve_fused
from dmflow.lasso.problem import GREEDY_STEP, SolveResult, curvature, lambda_max, plain_step
from dmflow.lasso.torch_solver import solve_torch

BACKENDS = {"torch": solve_torch, "fused": solve_fused}
_FIT = defaults("fit")


def solve_batched(
    gram: torch.Tensor,
    c: torch.Tensor,
    lam: torch.Tensor,
    *,
    w0: torch.Tensor | None = None,
    l2: float = _FIT["l2"],
    nonneg: bool = _FIT["nonneg"],
    tol: float = _FIT["tol"],
    max_iter: int = _FIT["max_iter"],
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

    Parameters
    ----------
    gram : [n, n]
        G, float32 or float64 (the dtype of ``c`` rules).
    c : [n, T]
        Xc^T yc / m of each target; its layout (feature- or target-major) is kept in the result.
    lam : [T]
        Each target's lambda.
    w0, gram_w0 : [n, T], optional
        A warm start and G @ w0.
    scale : [T], optional
        The KKT tolerance's unit; lambda_max by default.
    backend : {"auto", "torch", "fused"}
        One interface, two implementations (``BACKENDS``) that take the same iterates
        up to rounding: ``torch`` (``dmflow.lasso.torch_solver``; any device, the
        reference) and ``fused`` (``dmflow.lasso.fused``; CPU float32/64, numba
        kernels that make two passes over each target's row per iteration). ``auto``
        is fused where it applies.

    Returns
    -------
    SolveResult
        weight [n, T], iterations [T], converged [T], gram_weight = G @ weight [n, T].
    """
    if lip is None:
        lip, mu = curvature(gram, l2)
    steps = (plain_step(lip, mu), GREEDY_STEP / lip, 1.0 / lip)  # plain; greedy from, down to
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    fused_ok = c.device.type == "cpu" and c.dtype in (torch.float32, torch.float64)
    if backend == "fused" and not fused_ok:
        raise ValueError("the fused backend needs float32/float64 CPU tensors")
    if backend == "auto":
        backend = "fused" if fused_ok else "torch"
    if backend == "fused":
        gram = gram.to(c.dtype).contiguous()
    return BACKENDS[backend](
        gram, c, lam, w0=w0, l2=l2, nonneg=nonneg, tol=tol, scale=scale, max_iter=max_iter, steps=steps, gram_w0=gram_w0
    )


def warm_up_fused() -> float:
    """Compile (or load from numba's on-disk cache) the fused kernels, float32 and float64; seconds taken.

    A process pays this once, at its first fused solve: a few seconds of compilation
    on a fresh install, a fraction of a second from the cache after that. Benchmarks
    call it first so that it is reported on its own rather than inside a timing.
    """
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
