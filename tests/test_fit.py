"""fit_block / merge_fit promises: lambda by validation MSE, refit on all rows, order and ids kept."""

import json

import numpy as np
import pytest
import torch

import dmflow.lasso.accumulate as accumulate
import dmflow.lasso.dense as dense
import dmflow.lasso.stored_gram as stored_gram
import dmflow.lasso.working_sets as working_sets
from dmflow.core.budgets import check_memory, moments_bytes
from dmflow.core.codes import FLAG_CONSTANT, FLAG_OK
from dmflow.core.io import atomic_save_npz
from dmflow.core.layout import block_targets
from dmflow.lasso import accumulate_kernels as kernels
from dmflow.lasso.accumulate import add_gram, count_moments, mirror_upper
from dmflow.lasso.dense import validation_mse
from dmflow.lasso.groups import MIN_GROUP_WORK, group_count, over_target_groups
from dmflow.lasso.moments import row_moments
from dmflow.lasso.path import fit_from_moments, fit_targets
from dmflow.lasso.settings import FitSettings, split_validation_rows
from dmflow.lasso.solvers import solve_batched
from dmflow.lasso.spectrum import bottom_eigenvalue, top_eigenvalue
from dmflow.stages.fit import fit_moments_block, merge_fit
from dmflow.stages.moments import moments
from dmflow.store.schema import StoreError

from helpers import planted_fit as planted_problem
from helpers import write_store_folder as _fake_store

F64 = FitSettings(dtype="float64", tol=1e-10, max_iter=100_000, num_lambdas=12, lambda_min_ratio=1e-3, device="cpu")


def test_chosen_lambda_is_the_argmin_of_recorded_validation_mse():
    x, y, _ = planted_problem()
    fit_rows, val_rows = split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5)
    out = fit_targets(x, y, fit_rows=fit_rows, val_rows=val_rows, settings=F64)
    for j in range(y.shape[1] - 1):
        best = np.nanargmin(out["val_mse_path"][:, j])
        assert out["lam"][j] == out["lams"][best, j]
        assert out["val_mse"][j] == pytest.approx(out["val_mse_path"][best, j])
    assert out["flags"][-1] == FLAG_CONSTANT and (out["weight"][:, -1] == 0).all()
    assert (out["flags"][:-1] == FLAG_OK).all()


def test_patience_stops_a_path_only_after_that_many_lambdas_without_improvement():
    x, y, _ = planted_problem()
    rows = dict(
        zip(("fit_rows", "val_rows"), split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5), strict=True)
    )
    full = fit_targets(x, y, **rows, settings=FitSettings(**{**F64.__dict__, "patience": 0}))
    early = fit_targets(x, y, **rows, settings=FitSettings(**{**F64.__dict__, "patience": 2}))
    np.testing.assert_array_equal(full["lam"], early["lam"])  # the same winner when the curve is U-shaped
    for j in range(y.shape[1] - 1):
        best = np.nanargmin(full["val_mse_path"][:, j])
        stopped = np.isnan(early["val_mse_path"][:, j])
        assert not stopped[: best + 3].any() and (stopped.sum() == 0 or best + 3 <= np.argmax(stopped))
        assert (early["nnz_path"][stopped, j] == -1).all()


def test_target_groups_run_side_by_side_on_one_torch_thread_each_and_cover_the_targets_in_order():
    seen = []
    before = torch.get_num_threads()
    out = over_target_groups(lambda g: seen.append((g, torch.get_num_threads())) or (g.start, g.stop), 10, 3)
    assert out == [(0, 3), (3, 7), (7, 10)]  # contiguous, in order, all targets once
    assert {threads for _, threads in seen} == {1}
    assert torch.get_num_threads() == before  # restored
    assert over_target_groups(lambda g: (g.start, g.stop), 2, 8) == [(0, 1), (1, 2)]  # never an empty group
    single = over_target_groups(lambda g: torch.get_num_threads(), 5, 1)
    assert single == [before]  # one group keeps every thread for its products

    def fails(g: slice) -> None:
        raise RuntimeError(f"group {g.start}")

    with pytest.raises(RuntimeError, match="group"):
        over_target_groups(fails, 4, 2)
    assert torch.get_num_threads() == before


def test_group_count_needs_enough_work_per_group():
    n = 1000
    per_group = int(MIN_GROUP_WORK // n**2)  # targets per group at n = 1000
    assert group_count(per_group - 1, n, 2) == 1  # too small to split
    assert group_count(2 * per_group, n, 2) == 2
    assert group_count(10 * per_group, n, 2) == 2  # at most one group per thread
    assert group_count(10 * per_group, n, 1) == 1
    assert group_count(5, 40, 4) == 1


def test_targets_fitted_in_groups_equal_each_group_fitted_alone(monkeypatch):
    x, y, _ = planted_problem(t=6)
    rows = dict(
        zip(("fit_rows", "val_rows"), split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5), strict=True)
    )
    groups = []
    real = dense.over_target_groups
    monkeypatch.setattr(dense, "over_target_groups", lambda fn, t, w: groups.append(w) or real(fn, t, w))
    grouped = fit_targets(x, y, **rows, settings=F64, workers=2)
    fit_targets(x, y, **rows, settings=F64)  # default: group_count says this is too small to split
    assert groups == [2, 1]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside a group
    try:
        halves = [fit_targets(x, y[:, cols], **rows, settings=F64, workers=1) for cols in (slice(0, 3), slice(3, 6))]
    finally:
        torch.set_num_threads(before)
    for key in ("weight", "bias", "lam", "val_mse", "nnz", "flags", "train_mse", "val_mse_path", "nnz_path"):
        alone = np.concatenate([h[key] for h in halves], axis=-1)  # moments of 3 targets round apart from 6's
        np.testing.assert_allclose(grouped[key], alone, rtol=1e-9, atol=1e-12, err_msg=key)
    whole = fit_targets(x, y, **rows, settings=F64, workers=1)
    np.testing.assert_allclose(grouped["weight"], whole["weight"], atol=1e-8)
    np.testing.assert_array_equal(grouped["lam"], whole["lam"])


def test_validation_mse_equals_direct_computation():
    x, y, _ = planted_problem()
    fit_rows, val_rows = split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5)
    fit_m, val_m = row_moments(x, y, fit_rows), row_moments(x, y, val_rows)
    w = torch.as_tensor(np.random.default_rng(1).normal(size=(x.shape[1], y.shape[1])))
    b = fit_m.mean_y - fit_m.mean_x @ w
    direct = ((x[val_rows] @ w.numpy() + b.numpy() - y[val_rows]) ** 2).mean(0)
    np.testing.assert_allclose(
        validation_mse(val_m, w, fit_mean_x=fit_m.mean_x, fit_mean_y=fit_m.mean_y).numpy(), direct, rtol=1e-10
    )


def test_refit_uses_fit_and_validation_rows():
    x, y, _ = planted_problem()
    fit_rows, val_rows = split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5)
    out = fit_targets(x, y, fit_rows=fit_rows, val_rows=val_rows, settings=F64)
    varying = y[:, :-1]
    everything = row_moments(x, varying, np.arange(len(x)))
    gram, c, _ = everything.gram(torch.float64)
    direct = solve_batched(gram, c, torch.as_tensor(out["lam"][:-1]), tol=1e-10, max_iter=100_000).weight
    np.testing.assert_allclose(out["weight"][:, :-1], direct.numpy(), atol=1e-5)
    bias = everything.mean_y - everything.mean_x @ direct
    np.testing.assert_allclose(out["bias"][:-1], bias.numpy(), atol=1e-4)
    only_fit_rows = row_moments(x, varying, fit_rows).gram(torch.float64)
    on_fit_rows = solve_batched(
        *only_fit_rows[:2], torch.as_tensor(out["lam"][:-1]), tol=1e-10, max_iter=100_000
    ).weight
    assert np.abs(on_fit_rows.numpy() - out["weight"][:, :-1]).max() > 1e-3  # the refit really saw more rows


def test_planted_truth_support_is_recovered_end_to_end():
    x, y, w_true = planted_problem(m=3000)
    fit_rows, val_rows = split_validation_rows(np.arange(len(x)), 0.1, seed=0, alpha=0.5)
    out = fit_targets(x, y, fit_rows=fit_rows, val_rows=val_rows, settings=FitSettings(device="cpu"))
    for j in range(y.shape[1] - 1):
        top = set(np.argsort(-np.abs(out["weight"][:, j]))[:3])
        assert top == {0, 1, 2}
        pred = x @ out["weight"][:, j] + out["bias"][j]
        assert np.corrcoef(pred, x @ w_true[:, j])[0, 1] > 0.98


def test_validation_rows_are_deterministic_and_disjoint():
    rows = np.arange(0, 500, 2)
    a_fit, a_val = split_validation_rows(rows, 0.1, seed=0, alpha=0.5)
    b_fit, b_val = split_validation_rows(rows, 0.1, seed=0, alpha=0.5)
    assert np.array_equal(a_val, b_val) and len(a_val) == 25
    assert not set(a_fit) & set(a_val) and set(a_fit) | set(a_val) == set(rows)


def _moments(tmp_path, x, y, status=None, settings=F64):
    """A store in the collect stage's format, and its moments as the moments stage writes them."""
    store = _fake_store(tmp_path, x, y, status)
    moments(store, tmp_path / "moments", val_fraction=settings.val_fraction, seed=0)
    return tmp_path / "moments"


def test_blocks_merge_in_target_order_with_ids(tmp_path):
    x, y, _ = planted_problem(t=7)
    folder = _moments(tmp_path, x, y)
    paths = []
    for b in (1, 0, 2):  # written out of order on purpose
        out = fit_moments_block(folder, b, targets_per_job=3, settings=F64)
        assert np.array_equal(out["targets"], block_targets(b, 3, 7))
        atomic_save_npz(tmp_path / f"block{b}.npz", out)
        paths.append(tmp_path / f"block{b}.npz")
    data = {"target_ids": np.array([10, 11, 12, 13, 14, 15, 16]), "train_ids": np.arange(40)}
    np.savez(tmp_path / "data.npz", **data)
    merged = merge_fit(paths, tmp_path / "data.npz", tmp_path / "dm.npz")
    assert merged["weight"].shape == (40, 7) and merged["weight"].dtype == np.float32
    assert merged["lams"].shape == (12, 7)
    assert np.array_equal(merged["target_ids"], data["target_ids"])
    fit_rows, val_rows = split_validation_rows(np.arange(len(x)), F64.val_fraction, seed=0, alpha=0.5)
    whole = fit_targets(x, y, fit_rows=fit_rows, val_rows=val_rows, settings=F64)
    np.testing.assert_allclose(merged["weight"], whole["weight"], atol=1e-6)


def test_merge_refuses_missing_blocks(tmp_path):
    x, y, _ = planted_problem(t=4)
    folder = _moments(tmp_path, x, y)
    atomic_save_npz(tmp_path / "block0.npz", fit_moments_block(folder, 0, targets_per_job=2, settings=F64))
    np.savez(tmp_path / "data.npz", target_ids=np.arange(4), train_ids=np.arange(40))
    with pytest.raises(ValueError, match="expected 0..3"):
        merge_fit([tmp_path / "block0.npz"], tmp_path / "data.npz", tmp_path / "dm.npz")


def test_a_store_where_every_model_diverged_is_refused_by_the_moments(tmp_path):
    x, y, _ = planted_problem(t=3)
    with pytest.raises(StoreError, match="only 0 usable rows"):
        _moments(tmp_path, x, y, status=np.ones((len(x), 1), np.uint8))
    assert not (tmp_path / "moments").exists()


def test_diverged_rows_are_left_out(tmp_path):
    x, y, _ = planted_problem(t=2)
    status = np.zeros((len(x), 1), np.uint8)
    status[::10] = 1
    y_bad = y.copy()
    y_bad[::10] = 1e6  # garbage that must not reach the fit
    out = fit_moments_block(_moments(tmp_path, x, y_bad, status), 0, targets_per_job=2, settings=F64)
    assert out["num_fit_rows"] + out["num_val_rows"] == len(x) - len(x[::10])
    assert np.abs(out["bias"][0] - 1.0) < 1.0


def test_cvxpy_solver_agrees_with_batched_on_a_block(tmp_path):
    x, y, _ = planted_problem(n=20, m=300, t=2)
    settings = dict(dtype="float64", tol=1e-10, max_iter=100_000, num_lambdas=4, lambda_min_ratio=0.05, device="cpu")
    folder = _moments(tmp_path, x, y)
    a = fit_moments_block(folder, 0, targets_per_job=2, settings=FitSettings(solver="batched", **settings))
    b = fit_moments_block(folder, 0, targets_per_job=2, settings=FitSettings(solver="cvxpy", **settings))
    np.testing.assert_allclose(a["weight"], b["weight"], atol=1e-5)
    np.testing.assert_array_equal(a["lam"], b["lam"])


@pytest.mark.parametrize("options", [{}, {"nonneg": True}, {"l2": 0.05}])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_active_set_path_gives_the_reference_paths_datamodels(options, dtype):
    """The contract of the two fit paths: working sets on count moments = the dense reference, to the
    solver's tolerance (lambda choices, weights, flags), whatever the row blocks of the moments."""
    x, y, _ = planted_problem(n=60, m=2000, t=7)
    rows = split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5)
    tol = 1e-10 if dtype == "float64" else 1e-6
    settings = FitSettings(**{**F64.__dict__, "dtype": dtype, "tol": tol, **options})
    reference = fit_targets(x, y, fit_rows=rows[0], val_rows=rows[1], settings=settings)
    fit, val = count_moments(x, y, list(rows), block_rows=300)
    fast = fit_from_moments(fit, val, settings=settings, method="active")
    np.testing.assert_allclose(fast["weight"], reference["weight"], atol=1e-6 if dtype == "float64" else 1e-4)
    # bias = mean_y - mean_x . w: weights within 1e-4 move it by up to 1e-4 sum(mean_x)
    np.testing.assert_allclose(
        fast["bias"], reference["bias"], atol=1e-5 if dtype == "float64" else 1e-4 * x.mean(0).sum()
    )
    np.testing.assert_allclose(fast["lam"], reference["lam"], rtol=1e-5)  # the same lambda of each target's path
    np.testing.assert_array_equal(fast["flags"], reference["flags"])
    np.testing.assert_allclose(fast["val_mse_path"], reference["val_mse_path"], rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize(
    "solver",
    [
        "padded proximal (GPU)",
        "coordinate descent reading the Gram in place",
        "coordinate descent, copies in many batches",
        "only sparse products and quadratic forms",
    ],
)
def test_every_working_set_solver_gives_the_reference_paths_datamodels(solver, monkeypatch):
    """The working sets' other solvers: the GPU's batched proximal one (run here on the CPU),
    coordinate descent on sets too large to copy G[A, A] (reading each Gram row where it is stored)
    or with room for a few copies at a time; and every product G W and w^T G w from the supports."""
    if solver.startswith("padded"):
        monkeypatch.setattr(working_sets, "COORDINATE_DESCENT", False)
    elif solver.endswith("in place"):
        monkeypatch.setattr(working_sets, "CD_BUFFER_ENTRIES", 1)
    elif solver.endswith("batches"):
        monkeypatch.setattr(working_sets, "CD_BUFFER_ENTRIES", 300)
    else:
        monkeypatch.setattr(stored_gram, "SPARSE_COST", 0.0)
        monkeypatch.setattr(stored_gram, "QUADRATIC_SHARE", 1.0)
    x, y, _ = planted_problem(n=60, m=2000, t=7)
    rows = split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5)
    settings = FitSettings(**{**F64.__dict__, "dtype": "float32", "tol": 1e-6, "l2": 0.05})
    reference = fit_targets(x, y, fit_rows=rows[0], val_rows=rows[1], settings=settings)
    fit, val = count_moments(x, y, list(rows), block_rows=300)
    fast = fit_from_moments(fit, val, settings=settings, method="active")
    np.testing.assert_allclose(fast["weight"], reference["weight"], atol=1e-4)
    np.testing.assert_allclose(fast["lam"], reference["lam"], rtol=1e-5)
    np.testing.assert_array_equal(fast["flags"], reference["flags"])


@pytest.mark.parametrize("rows", ["one row set", "fit and validation rows joined (two Grams and a shift)"])
def test_sparse_products_and_quadratic_forms_equal_the_dense_ones(rows, monkeypatch):
    """G W from the non-zeros of W, and w^T G w from the supports' Gram entries, on the moments as stored."""
    x, y, _ = planted_problem(n=48, m=900, t=9)
    fit, val = count_moments(x, y, [np.arange(0, 900, 3), np.arange(1, 900, 3)], block_rows=200)
    mom = fit if rows == "one row set" else fit.combine(val)
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(size=(48, 9)) * (rng.random((48, 9)) < np.linspace(0, 0.9, 9))).float()
    gram = torch.from_numpy(mom.sxx(slice(None)) / mom.count)
    for cost, share in ((1e9, 0.0), (3.0, 0.3), (0.0, 1.0)):  # dense only; split by non-zeros; sparse only
        monkeypatch.setattr(stored_gram, "SPARSE_COST", cost)
        monkeypatch.setattr(stored_gram, "QUADRATIC_SHARE", share)
        product = stored_gram.gram_product(mom, w, dtype=torch.float32, device="cpu")
        np.testing.assert_allclose(product.numpy(), (gram @ w.double()).numpy(), atol=1e-5)
        quad = ((gram @ w.double()) * w.double()).sum(0).numpy()
        quadratic = stored_gram.gram_quadratic(mom, w, dtype=torch.float32, device="cpu")
        np.testing.assert_allclose(quadratic.numpy(), quad, rtol=1e-5, atol=1e-8)


def test_the_sparse_product_takes_the_targets_with_the_fewest_non_zeros():
    nonzero = np.zeros((4, 100), dtype=np.bool_)  # [targets, features]
    nonzero[0, :2] = nonzero[1, :90] = nonzero[2, :3] = nonzero[3, 5:95] = True
    # dense for the two broad targets costs 95 rows x 2; sparse 3 x 180 non-zeros: split them
    assert stored_gram.sparse_targets(nonzero).tolist() == [True, False, True, False]
    # narrow targets on different rows: sparse (3 x 20 non-zeros), not dense (20 rows x 10); one
    # target's dense product costs as many rows as its non-zeros, so one may stay dense
    narrow = np.zeros((10, 100), dtype=np.bool_)
    narrow[np.arange(20) // 2, np.arange(20)] = True
    assert stored_gram.sparse_targets(narrow).sum() >= 9
    # a few narrow targets on the same rows: the dense product over those rows is cheaper
    assert not stored_gram.sparse_targets(nonzero[[0, 2]]).any()


@pytest.mark.parametrize("gram_product", ["float32", "int8"])  # each candidate product forced, on every machine
@pytest.mark.parametrize("cross_product", ["float32", "int8"])  # float32 products, or int8 ones of fixed-point margins
def test_count_moments_are_the_centred_sums_of_the_exact_counts(gram_product, cross_product, monkeypatch):
    monkeypatch.setattr(accumulate, "CROSS_TARGETS", 3)  # int8 products for 3 targets, then 1
    x, y, _ = planted_problem(n=30, m=700, t=4)
    y[:, 1] = 2.5  # a constant target: no spread, cross moments 0
    rows = np.arange(3, 700, 2)
    (mom,) = count_moments(x, y, [rows], block_rows=64, gram=gram_product, cross=cross_product)
    xs, ys = x[rows].astype(float), y[rows]
    xc = xs - xs.mean(0)
    np.testing.assert_array_equal(mom.sum_x, xs.sum(0))
    # centred in float64 from the exact counts, stored in float32: only the last rounding is left
    np.testing.assert_allclose(mom.grams[0], xc.T @ xc, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(mom.cross, (ys - ys.mean(0)).T @ xs, rtol=1e-5, atol=1e-3)
    assert not mom.cross[1].any()
    np.testing.assert_allclose(mom.sxx([1, 4], [0, 2, 5]), (xc.T @ xc)[[1, 4]][:, [0, 2, 5]], atol=1e-5)
    gram = xc.T @ xc / len(rows)
    np.testing.assert_allclose(mom.centred_rows(torch.tensor([2, 7])).numpy(), gram[[2, 7]], atol=1e-7)
    idx = torch.tensor([[0, 3, 9], [4, 30, 30]])  # the value n = 30 pads: it reads 0
    blocks = mom.centred_blocks(idx).numpy()
    np.testing.assert_allclose(blocks[0], gram[np.ix_([0, 3, 9], [0, 3, 9])], atol=1e-7)
    np.testing.assert_allclose(blocks[1], np.pad(gram[[[4]], [4]], ((0, 2), (0, 2))), atol=1e-7)
    dense = row_moments(x, y, rows)
    np.testing.assert_allclose(mom.syy, dense.syy.numpy(), rtol=1e-10, atol=1e-20)
    np.testing.assert_allclose(mom.mean_y, dense.mean_y.numpy(), rtol=1e-12)
    both = count_moments(x, y, [rows[:100], rows[100:]], block_rows=50, gram=gram_product, cross=cross_product)
    joined = both[0].combine(both[1])
    np.testing.assert_allclose(joined.sxx(slice(None)), mom.sxx(slice(None)), atol=1e-4)
    np.testing.assert_allclose(joined.centred_blocks(idx).numpy(), blocks, atol=1e-7)
    np.testing.assert_allclose(joined.cross, mom.cross, atol=1e-3)
    np.testing.assert_allclose(joined.syy, mom.syy, rtol=1e-9, atol=1e-20)
    y[5, 2] = np.nan  # never in a store's usable rows: refused, not rounded to garbage
    with pytest.raises(ValueError, match="row set 0: non-finite margins of target 2"):
        count_moments(x, y, [rows], gram=gram_product, cross=cross_product)


def test_fixed_point_margins_split_into_int8_digits_and_join_back_exactly():
    """The int8 cross product's arithmetic: balanced base-128 digits of round(yc / step), their products with
    0/1 masks summed in int32, joined in int64 and scaled once."""
    rng = np.random.default_rng(0)
    yc = rng.standard_normal((70, 130)) * np.array([1e-3, 1.0, 1e3, 0.0] * 32 + [1.0, 2.0])
    step = np.maximum(np.abs(yc).max(0), 1e-300) / 2**26  # the largest margin is exactly +-2^26 steps
    digits = np.empty((kernels.DIGITS, 130, 70), np.int8)
    kernels.fixed_point_digits(yc, 1 / step, digits)
    q = np.rint(yc / step).astype(np.int64)
    assert digits.min() >= -64 and digits.max() < 64
    np.testing.assert_array_equal(sum(d.T.astype(np.int64) * 128**i for i, d in enumerate(digits)), q)
    x = rng.random((70, 40)) < 0.5
    sums = np.stack([d.astype(np.int32) @ x.astype(np.int32) for d in digits])  # what torch._int_mm gives
    cross = np.ones((130, 40), np.float32)
    kernels.add_fixed_point(cross, sums, step)
    np.testing.assert_allclose(cross, 1 + (q * step[None]).T @ x, rtol=1e-6, atol=1e-6)  # float32 rounding


def test_top_eigenvalue_is_the_centred_grams_largest_with_or_without_rank_one_shifts():
    """The solvers' step bound: Lanczos on the float32 Grams finds the float64 eigenvalue to its tolerance."""
    x, y, _ = planted_problem(n=40, m=900, t=3)
    rows = np.arange(900)
    (mom,) = count_moments(x, y, [rows], block_rows=128)
    fit, val = count_moments(x, y, [rows[:700], rows[700:]], block_rows=128)
    xc = x.astype(float) - x.mean(0)
    exact = np.linalg.eigvalsh(xc.T @ xc / len(rows))[-1]
    assert top_eigenvalue(mom) == pytest.approx(exact, rel=1e-4)
    assert top_eigenvalue(fit.combine(val)) == pytest.approx(exact, rel=1e-4)  # two Grams and a shift


@pytest.mark.parametrize(("n", "fixed_size"), [(60, True), (60, False), (8, True)])
def test_bottom_eigenvalue_is_the_smallest_non_null_one_within_one_percent(n, fixed_size):
    """The plain steps' mu: fixed-size masks make the all-ones vector a null direction of G, which carries
    no gradient and is skipped; Lanczos (n > 16) or an exact solve (tiny n) finds the next one."""
    rng = np.random.default_rng(n)
    m = 1500
    if fixed_size:  # every row exactly n/2 ones, like a real alpha = 0.5 store
        x = rng.permuted(np.tile(np.arange(n) < n // 2, (m, 1)), axis=1)
    else:
        x = rng.random((m, n)) < 0.5
    y = rng.standard_normal((m, 2)).astype(np.float32)
    rows = np.arange(m)
    fit, val = count_moments(x, y, [rows[:1200], rows[1200:]], block_rows=256)
    every = fit.combine(val)  # two Grams and a shift
    xc = x.astype(float) - x.mean(0)
    values = np.linalg.eigvalsh(xc.T @ xc / m)
    assert (values[0] < 1e-9 * values[-1]) == fixed_size
    top = top_eigenvalue(every)
    assert bottom_eigenvalue(every, top) == pytest.approx(values[values > 1e-6 * values[-1]][0], rel=0.01)
    (ones,) = count_moments(np.ones((m, n), dtype=bool), y, [rows])  # G = 0: every direction is null
    assert bottom_eigenvalue(ones, 0.0) == 0.0


def test_the_fit_refuses_moments_that_do_not_match_their_store_or_were_changed(tmp_path):
    x, y, _ = planted_problem(t=3)
    folder = _moments(tmp_path, x, y)
    fit_moments_block(folder, 0, targets_per_job=3, settings=F64, store_manifest=tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["num_models"] += 0  # a store rewritten since: same content, another manifest
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(StoreError, match="computed from another version of the store"):
        fit_moments_block(folder, 0, targets_per_job=3, settings=F64, store_manifest=tmp_path / "manifest.json")
    with pytest.raises(StoreError, match="split the rows with fit.val_fraction=0.1, not 0.3"):
        fit_moments_block(folder, 0, targets_per_job=3, settings=FitSettings(val_fraction=0.3))
    gram = np.load(folder / "gram_fit.npy")
    gram[0, 0] += 1
    np.save(folder / "gram_fit.npy", gram)
    with pytest.raises(StoreError, match="gram_fit.npy: sha256 differs from manifest.json"):
        fit_moments_block(folder, 0, targets_per_job=3, settings=F64)


def test_a_job_that_would_need_more_memory_than_it_was_given_is_refused_before_any_work(tmp_path):
    x, y, _ = planted_problem(t=3)
    store = _fake_store(tmp_path, x, y)
    check_memory(moments_bytes(40, 3), 100, "moments")  # small enough
    with pytest.raises(StoreError, match=r"moments of n=40 .* need ~.* GB, more than the 1 MB this job was given"):
        moments(store, tmp_path / "moments", val_fraction=0.1, seed=0, mem_mb=1)
    assert not (tmp_path / "moments").exists()
    with pytest.raises(StoreError, match="more than this machine's memory"):
        check_memory(10**15, None, "a paper-scale store")


@pytest.mark.parametrize("int8", [False, True])  # both paths on every machine, whichever one it would choose
@pytest.mark.parametrize("n", [64, 30])
def test_gram_counts_are_exact_with_either_product(n, int8, monkeypatch):
    monkeypatch.setattr(accumulate, "GRAM_COLS", 24)  # products in column blocks, the last one narrower
    rng = np.random.default_rng(n)
    x = rng.random((300, n)) < 0.5
    gram = torch.full((n, n), 7.0)
    add_gram(gram, x, int8=int8)
    add_gram(gram, x[:5], int8=int8)  # a block of a few rows
    expected = 7 + x.T.astype(np.int64) @ x + x[:5].T.astype(np.int64) @ x[:5]
    np.testing.assert_array_equal(gram.numpy(), expected)
    upper = torch.zeros((n, n))
    add_gram(upper, x, upper=True, int8=int8)  # the upper block triangle, then its mirror image below it
    add_gram(upper, x[:5], upper=True, int8=int8)
    mirror_upper(upper)
    np.testing.assert_array_equal(upper.numpy(), expected - 7)
