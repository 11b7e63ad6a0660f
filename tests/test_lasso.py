"""The batched solver solves the DESIGN lasso exactly: checked against cvxpy and by KKT."""

import numpy as np
import pytest
import torch

from dmflow.lasso.cvxpy_solver import CLARABEL_TIGHT, solve_cvxpy
from dmflow.lasso.moments import row_moments
from dmflow.lasso.path_loop import lambda_path, path_warm_start
from dmflow.lasso.problem import PLAIN_STEPS, curvature, kkt_violation, lambda_max, objective, plain_step
from dmflow.lasso.solvers import BACKENDS, solve_batched

from helpers import planted_lasso as planted


def literal_objective(x, y, w, b, lam):
    """(1/2m) ||X w + b - y||^2 + lam ||w||_1, straight from the raw masks."""
    r = x.astype(float) @ w + b - y
    return (r * r).sum(0) / (2 * len(x)) + lam * np.abs(w).sum(0)


def cvxpy_reference(x, y, lam, l2=0.0, nonneg=False):
    """The literal DESIGN objective on the raw 0/1 masks, one cvxpy problem per target."""
    import cvxpy as cp

    m, n = x.shape
    ref = np.zeros((n, y.shape[1]))
    for j in range(y.shape[1]):
        w, b = cp.Variable(n), cp.Variable()
        expr = cp.sum_squares(x.astype(float) @ w + b - y[:, j]) / (2 * m) + lam[j] * cp.norm1(w)
        if l2:
            expr += 0.5 * l2 * cp.sum_squares(w)
        cp.Problem(cp.Minimize(expr), [w >= 0] if nonneg else []).solve(solver="CLARABEL", **CLARABEL_TIGHT)
        ref[:, j] = w.value
    return ref


@pytest.mark.parametrize(
    "ratio,fixed_size",
    [(1.5, True), (1.0, True), (0.5, True), (0.1, True), (0.02, True), (1e-4, False)],
)
def test_batched_matches_cvxpy_in_float64(ratio, fixed_size):
    x, y, _, _ = planted(fixed_size=fixed_size)
    mom = row_moments(x, y, np.arange(len(x)))
    gram, c, yy = mom.gram(torch.float64)
    lam = lambda_max(c) * ratio
    res = solve_batched(gram, c, lam, tol=1e-10, max_iter=200_000)
    assert res.converged.all()
    ref = cvxpy_reference(x, y, lam.numpy())
    np.testing.assert_allclose(res.weight.numpy(), ref, atol=1e-5)
    ours = objective(gram, c, yy, w=res.weight, lam=lam).numpy()
    theirs = objective(gram, c, yy, w=torch.as_tensor(ref), lam=lam).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)
    assert (ours <= theirs + 1e-9).all()
    if ratio >= 1:
        assert (res.weight == 0).all()
    # the Gram-form objective is the literal one at the optimal intercept
    b = (mom.mean_y - mom.mean_x @ res.weight).numpy()
    np.testing.assert_allclose(literal_objective(x, y, res.weight.numpy(), b, lam.numpy()), ours, rtol=1e-10)


def test_gram_form_cvxpy_solver_matches_literal_and_batched():
    x, y, _, _ = planted(t=2)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    path = lambda_path(lambda_max(c), 3, 0.1)
    ours = solve_cvxpy(gram.numpy(), c.numpy(), path.numpy())
    for j in range(3):
        np.testing.assert_allclose(ours[j], cvxpy_reference(x, y, path[j].numpy()), atol=1e-5)
        res = solve_batched(gram, c, path[j], tol=1e-10, max_iter=100_000)
        np.testing.assert_allclose(res.weight.numpy(), ours[j], atol=1e-5)


@pytest.mark.parametrize("options", [{"nonneg": True}, {"l2": 0.05}, {"nonneg": True, "l2": 0.05}])
def test_nonneg_and_elastic_net_options_match_cvxpy(options):
    x, y, _, _ = planted()
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    lam = lambda_max(c, options.get("nonneg", False)) * 0.1
    res = solve_batched(gram, c, lam, tol=1e-10, max_iter=200_000, **options)
    ref = cvxpy_reference(x, y, lam.numpy(), **options)
    np.testing.assert_allclose(res.weight.numpy(), ref, atol=1e-5)
    if options.get("nonneg"):
        assert (res.weight >= 0).all()
    assert (
        kkt_violation(
            gram, c, res.weight, lam=lam, l2=options.get("l2", 0.0), nonneg=options.get("nonneg", False)
        ).max()
        < 1e-8
    )


def test_planted_support_is_recovered():
    x, y, w_true, support = planted(n=60, m=3000, t=3, noise=0.2)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    res = solve_batched(gram, c, lambda_max(c) * 0.05, tol=1e-9, max_iter=100_000)
    for j in range(3):
        top = np.argsort(-np.abs(res.weight[:, j].numpy()))[:4]
        assert set(top) == set(support)
        np.testing.assert_allclose(res.weight[support, j].numpy(), w_true[support, j], atol=0.2)


def test_moments_combine_equals_moments_of_union_and_read_in_blocks():
    x, y, _, _ = planted(m=300)
    rows_a, rows_b = np.arange(0, 300, 3), np.setdiff1d(np.arange(300), np.arange(0, 300, 3))
    both = row_moments(x, y, rows_a).combine(row_moments(x, y, rows_b))
    direct = row_moments(x, y, np.arange(300), block_rows=7)
    for name in ("mean_x", "mean_y", "sxx", "sxy", "syy"):
        torch.testing.assert_close(getattr(both, name), getattr(direct, name))
    xc = x - x.mean(0)
    np.testing.assert_allclose(direct.sxx.numpy(), xc.T @ xc, atol=1e-9)


def test_lambda_path_is_geometric_from_lambda_max():
    lam_max = torch.tensor([2.0, 0.5], dtype=torch.float64)
    path = lambda_path(lam_max, 5, 1e-2)
    np.testing.assert_allclose(path[0].numpy(), [2.0, 0.5])
    np.testing.assert_allclose(path[-1].numpy(), [0.02, 0.005])
    ratios = (path[1:] / path[:-1]).numpy()
    np.testing.assert_allclose(ratios, ratios[0, 0])


def along(path, j):
    """The lambdas ``path_warm_start`` extrapolates through at step j of a path."""
    return {"lam_prev": path[j - 2], "lam": path[j - 1], "lam_next": path[j]}


def reference_kkt(gram, c, w, lam, l2, nonneg):
    """The KKT violation written out with masks, as in the definition."""
    g = gram @ w - c + l2 * w
    on_support = (g + lam * torch.sign(w)).abs()
    off = (-g - lam).clamp(min=0) if nonneg else (g.abs() - lam).clamp(min=0)
    return torch.where(w != 0, on_support, off).amax(0)


@pytest.mark.parametrize("nonneg", [False, True])
def test_kkt_violation_equals_the_masked_definition(nonneg):
    rng = np.random.default_rng(3)
    a = torch.as_tensor(rng.normal(size=(12, 12)))
    gram, c = a @ a.T / 12, torch.as_tensor(rng.normal(size=(12, 6)))
    w = torch.as_tensor(rng.normal(size=(12, 6)) * (rng.random((12, 6)) < 0.5))
    w = w.abs() if nonneg else w
    lam = torch.as_tensor(rng.uniform(0.1, 1.0, 6))
    torch.testing.assert_close(
        kkt_violation(gram, c, w, lam=lam, l2=0.1, nonneg=nonneg), reference_kkt(gram, c, w, lam, 0.1, nonneg)
    )


def test_path_warm_start_is_exact_on_a_fixed_support_and_does_not_change_the_path():
    # masks of varying size: with fixed-size ones a full support with balanced signs
    # leaves the objective flat along all-ones, and two exact solutions may differ there
    x, y, _, _ = planted(t=3, fixed_size=False)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    path = lambda_path(lambda_max(c), 12, 1e-3)
    solve = lambda lam, w0: solve_batched(gram, c, lam, w0=w0, tol=1e-12, max_iter=100_000).weight  # noqa: E731
    close = lambda_max(c) * torch.tensor([0.05, 0.0499, 0.0498], dtype=torch.float64).unsqueeze(1)
    w_prev, w, exact = (solve(lam, None) for lam in close)
    start = path_warm_start(w_prev, w, lam_prev=close[0], lam=close[1], lam_next=close[2])
    same_signs = (torch.sign(w_prev) == torch.sign(w)).all(0) & (torch.sign(w) == torch.sign(exact)).all(0)
    assert same_signs.any()  # on close lambdas the signs rarely change
    torch.testing.assert_close(start[:, same_signs], exact[:, same_signs], atol=1e-9, rtol=0)
    # along the path: the same solutions as plain warm starts, in fewer iterations
    plain, extrap = torch.zeros_like(c), [torch.zeros_like(c)] * 2
    its_plain = its_extrap = 0
    for j in range(len(path)):
        res = solve_batched(gram, c, path[j], w0=plain, tol=1e-10, max_iter=100_000)
        plain, its_plain = res.weight, its_plain + int(res.iterations.sum())
        w0 = path_warm_start(extrap[0], extrap[1], **along(path, j)) if j >= 2 else extrap[1]
        res = solve_batched(gram, c, path[j], w0=w0, tol=1e-10, max_iter=100_000)
        extrap, its_extrap = [extrap[1], res.weight], its_extrap + int(res.iterations.sum())
        np.testing.assert_allclose(extrap[1].numpy(), plain.numpy(), atol=1e-7)
    assert its_extrap < its_plain


@pytest.mark.parametrize("backend", ["torch", "fused"])
@pytest.mark.parametrize("options", [{}, {"l2": 0.05}])
def test_the_product_at_the_solution_comes_back_and_spares_the_next_lambda_its_first_product(
    backend, options, monkeypatch
):
    # along a path, G @ w0 for the extrapolated warm start is the same combination of the
    # previous solutions' products: passing it must change neither iterates nor counts
    products = {"n": 0}
    mm, addmm = torch.mm, torch.addmm

    def counted(fn):
        def call(*args, **kwargs):
            products["n"] += 1
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(torch, "mm", counted(mm))
    monkeypatch.setattr(torch, "addmm", counted(addmm))
    x, y, _, _ = planted(t=6)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    path = lambda_path(lambda_max(c), 10, 1e-3)
    kw = dict(tol=1e-10, max_iter=100_000, backend=backend, **options)
    w, gw = [torch.zeros_like(c)] * 2, [torch.zeros_like(c)] * 2
    for j in range(len(path)):
        w0 = path_warm_start(*w, **along(path, j)) if j >= 2 else w[1]
        gw0 = path_warm_start(*gw, **along(path, j)) if j >= 2 else gw[1]
        products["n"] = 0
        computed = solve_batched(gram, c, path[j], w0=w0, **kw)
        with_product = products["n"]
        products["n"] = 0
        combined = solve_batched(gram, c, path[j], w0=w0, gram_w0=gw0, **kw)
        assert products["n"] == with_product - int(bool((w0 != 0).any()))  # one product fewer
        torch.testing.assert_close(combined.gram_weight, gram @ combined.weight, atol=1e-12, rtol=0)
        torch.testing.assert_close(computed.gram_weight, gram @ computed.weight, atol=1e-12, rtol=0)
        torch.testing.assert_close(combined.weight, computed.weight, atol=1e-12, rtol=0)
        assert torch.equal(combined.iterations, computed.iterations)
        w, gw = [w[1], combined.weight], [gw[1], combined.gram_weight]


def test_max_iter_reports_not_converged_and_keeps_the_last_iterate():
    x, y, _, _ = planted()
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    res = solve_batched(gram, c, lambda_max(c) * 0.01, tol=1e-14, max_iter=3)
    assert not res.converged.any() and (res.iterations == 3).all() and (res.weight != 0).any()


def test_targets_leaving_the_batch_early_keep_the_weights_they_converged_with():
    x, y, _, _ = planted(t=8)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    lam = lambda_max(c) * torch.linspace(0.9, 0.01, 8, dtype=torch.float64)  # easy to hard
    together = solve_batched(gram, c, lam, tol=1e-9, max_iter=100_000)
    for j in range(8):
        alone = solve_batched(gram, c[:, j : j + 1], lam[j : j + 1], tol=1e-9, max_iter=100_000)
        assert int(alone.iterations[0]) == int(together.iterations[j])
        torch.testing.assert_close(alone.weight[:, 0], together.weight[:, j], atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("options", [{}, {"nonneg": True}, {"l2": 0.05}, {"nonneg": True, "l2": 0.05}])
@pytest.mark.parametrize("max_iter", [3, 100_000])
def test_every_backend_takes_the_torch_references_iterates(backend, options, max_iter):
    """The contract of ``solve_batched``'s backends: the same iterates as the torch loop, up to rounding."""
    # from lambda_max (zero at once; few non-zero columns: the sparse product) to
    # small lambdas (dense), easy to hard, so targets finish and leave the batch
    x, y, _, _ = planted(t=10)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    lam = lambda_max(c, options.get("nonneg", False)) * torch.logspace(0, -2.5, 10, dtype=torch.float64)
    w0 = solve_batched(gram, c, lam * 1.5, tol=1e-3, backend="torch", **options).weight
    for start, scale in ((None, None), (w0, 2 * lambda_max(c))):
        kw = dict(w0=start, scale=scale, tol=1e-10, max_iter=max_iter, **options)
        ref = solve_batched(gram, c, lam, backend="torch", **kw)
        res = solve_batched(gram, c, lam, backend=backend, **kw)
        torch.testing.assert_close(res.weight, ref.weight, atol=1e-6, rtol=0)
        assert res.iterations.tolist() == ref.iterations.tolist()
        assert res.converged.tolist() == ref.converged.tolist()
        assert bool(res.converged.all()) == (max_iter > 3)
        assert res.weight.is_contiguous() and res.weight.shape == c.shape
    assert int(res.iterations[0]) == 0  # target 0 is at lambda_max: its zero start already satisfies KKT


def test_fused_kernels_in_float32_and_the_backend_choice():
    x, y, _, _ = planted(t=6)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float32)
    lam = lambda_max(c) * torch.linspace(0.5, 0.01, 6)
    ref = solve_batched(gram, c, lam, tol=1e-6, backend="torch")
    res = solve_batched(gram, c, lam, tol=1e-6, backend="fused")
    auto = solve_batched(gram, c, lam, tol=1e-6)
    assert res.weight.dtype == torch.float32 and res.converged.all()
    torch.testing.assert_close(res.weight, ref.weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(auto.weight, res.weight, atol=0, rtol=0)  # "auto" is fused on CPU
    kkt = kkt_violation(gram.double(), c.double(), res.weight.double(), lam=lam.double())
    assert (kkt <= 2e-6 * lambda_max(c.double())).all()  # tol 1e-6 up to float32 rounding
    empty = solve_batched(gram, c[:, :0], lam[:0], backend="fused")
    assert empty.weight.shape == (c.shape[0], 0) and empty.iterations.numel() == 0
    with pytest.raises(ValueError):
        solve_batched(gram, c, lam, backend="cuda-ish")
    with pytest.raises(ValueError):
        solve_batched(gram.half(), c.half(), lam.half(), backend="fused")


def test_fused_sparse_product_only_uses_the_non_zero_columns(monkeypatch):
    import dmflow.lasso.fused_kernels as kernels

    x, y, _, _ = planted(n=40, t=6)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    lam = lambda_max(c) * torch.linspace(0.95, 0.5, 6, dtype=torch.float64)  # few non-zero weights
    gathers = []
    gather = kernels.gather_columns

    def counted(src, cols, dst):
        gathers.append(cols.size)
        gather(src, cols, dst)

    monkeypatch.setattr(kernels, "gather_columns", counted)
    res = solve_batched(gram, c, lam, tol=1e-10, max_iter=100_000, backend="fused")
    ref = solve_batched(gram, c, lam, tol=1e-10, max_iter=100_000, backend="torch")
    assert gathers and max(gathers) <= 20  # the sparse product ran, on at most half the columns
    torch.testing.assert_close(res.weight, ref.weight, atol=1e-9, rtol=0)
    assert res.iterations.tolist() == ref.iterations.tolist()


@pytest.mark.parametrize("fixed_size", [True, False])
def test_curvature_bounds_the_spectrum_and_skips_the_null_direction_of_fixed_size_masks(fixed_size):
    x, y, _, _ = planted(fixed_size=fixed_size)
    gram, _, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    evals = torch.linalg.eigvalsh(gram)
    lip, mu = curvature(gram)
    assert lip == pytest.approx(1.01 * evals[-1].item())
    ones_is_null = bool((gram @ torch.ones(gram.shape[0], dtype=gram.dtype)).abs().max() < 1e-12)
    assert ones_is_null == fixed_size  # every fixed-size mask sums to the same count
    # with fixed-size masks the smallest eigenvalue is ~0 (the all-ones direction) and mu is the next one
    assert mu == pytest.approx(evals[1 if fixed_size else 0].item())
    assert 0 < mu < lip and plain_step(lip, mu) == pytest.approx(2 / (lip + mu)) and plain_step(lip, 0.0) == 1 / lip
    assert curvature(gram, l2=0.05) == pytest.approx((lip + 0.05, mu + 0.05))  # the l2 term adds to both


def test_long_plain_steps_reach_the_same_path_in_fewer_iterations():
    # mu = 0 makes the plain steps before greedy FISTA 1/L long instead of 2/(L + mu)
    x, y, _, _ = planted(n=100, m=2000, t=8)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    lip, mu = curvature(gram)
    path = lambda_path(lambda_max(c), 20, 1e-3)
    runs = {}
    for name, mu_used in (("long", mu), ("1/L", 0.0)):
        w = w_prev = torch.zeros_like(c)
        total = 0
        for j in range(20):
            w0 = path_warm_start(w_prev, w, **along(path, j)) if j >= 2 else w
            res = solve_batched(gram, c, path[j], w0=w0, tol=1e-8, max_iter=100_000, lip=lip, mu=mu_used)
            assert res.converged.all()
            w_prev, w, total = w, res.weight, total + int(res.iterations.sum())
        runs[name] = (total, w)
    assert runs["long"][0] < 0.9 * runs["1/L"][0]  # measured 1359 against 1662
    torch.testing.assert_close(runs["long"][1], runs["1/L"][1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["fused", "torch"])
def test_target_major_inputs_give_the_same_weights_in_the_same_layout(backend):
    x, y, _, _ = planted(t=6)
    gram, c, _ = row_moments(x, y, np.arange(len(x))).gram(torch.float64)
    lam = lambda_max(c) * torch.linspace(0.9, 0.02, 6, dtype=torch.float64)
    w0 = solve_batched(gram, c, lam * 1.3, tol=1e-4, backend=backend).weight
    ref = solve_batched(gram, c, lam, w0=w0, tol=1e-10, max_iter=100_000, backend=backend)
    c_t, w0_t = c.T.contiguous().T, w0.T.contiguous().T
    res = solve_batched(gram, c_t, lam, w0=w0_t, tol=1e-10, max_iter=100_000, backend=backend)
    torch.testing.assert_close(res.weight, ref.weight, atol=1e-12, rtol=0)
    assert res.iterations.tolist() == ref.iterations.tolist()
    if backend == "fused":
        assert res.weight.T.is_contiguous()
    assert PLAIN_STEPS < int(ref.iterations.max())  # the switch to greedy FISTA happened
