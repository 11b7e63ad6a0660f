"""fit_block / merge_fit promises: lambda by validation MSE, refit on all rows, order and ids kept."""

import numpy as np
import pytest
import torch

from dmflow.core.codes import FLAG_CONSTANT, FLAG_NO_DATA, FLAG_OK
from dmflow.core.io import atomic_save_npz
from dmflow.core.layout import block_targets
from dmflow.lasso.moments import row_moments
from dmflow.lasso.path import (
    MIN_GROUP_WORK,
    FitSettings,
    fit_targets,
    group_count,
    over_target_groups,
    split_validation_rows,
    validation_mse,
)
from dmflow.lasso.solvers import solve_batched
from dmflow.stages.fit import fit_store_block, merge_fit

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
    import dmflow.lasso.path

    x, y, _ = planted_problem(t=6)
    rows = dict(
        zip(("fit_rows", "val_rows"), split_validation_rows(np.arange(len(x)), 0.2, seed=0, alpha=0.5), strict=True)
    )
    groups = []
    real = dmflow.lasso.path.over_target_groups
    monkeypatch.setattr(dmflow.lasso.path, "over_target_groups", lambda fn, t, w: groups.append(w) or real(fn, t, w))
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


def test_blocks_merge_in_target_order_with_ids(tmp_path):
    x, y, _ = planted_problem(t=7)
    store = _fake_store(tmp_path, x, y)
    paths = []
    for b in (1, 0, 2):  # written out of order on purpose
        out = fit_store_block(store, b, targets_per_job=3, settings=F64, seed=0)
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
    store = _fake_store(tmp_path, x, y)
    atomic_save_npz(tmp_path / "block0.npz", fit_store_block(store, 0, targets_per_job=2, settings=F64, seed=0))
    np.savez(tmp_path / "data.npz", target_ids=np.arange(4), train_ids=np.arange(40))
    with pytest.raises(ValueError, match="expected 0..3"):
        merge_fit([tmp_path / "block0.npz"], tmp_path / "data.npz", tmp_path / "dm.npz")


def test_all_models_diverged_gives_zero_weights_and_a_flag(tmp_path):
    x, y, _ = planted_problem(t=3)
    store = _fake_store(tmp_path, x, y, status=np.ones((len(x), 1), np.uint8))
    out = fit_store_block(store, 0, targets_per_job=3, settings=F64, seed=0)
    assert (out["weight"] == 0).all() and (out["flags"] == FLAG_NO_DATA).all()


def test_diverged_rows_are_left_out(tmp_path):
    x, y, _ = planted_problem(t=2)
    status = np.zeros((len(x), 1), np.uint8)
    status[::10] = 1
    y_bad = y.copy()
    y_bad[::10] = 1e6  # garbage that must not reach the fit
    out = fit_store_block(_fake_store(tmp_path, x, y_bad, status), 0, targets_per_job=2, settings=F64, seed=0)
    assert out["num_fit_rows"] + out["num_val_rows"] == len(x) - len(x[::10])
    assert np.abs(out["bias"][0] - 1.0) < 1.0


def test_cvxpy_solver_agrees_with_batched_on_a_block(tmp_path):
    x, y, _ = planted_problem(n=20, m=300, t=2)
    store = _fake_store(tmp_path, x, y)
    settings = dict(dtype="float64", tol=1e-10, max_iter=100_000, num_lambdas=4, lambda_min_ratio=0.05, device="cpu")
    a = fit_store_block(store, 0, targets_per_job=2, settings=FitSettings(solver="batched", **settings), seed=0)
    b = fit_store_block(store, 0, targets_per_job=2, settings=FitSettings(solver="cvxpy", **settings), seed=0)
    np.testing.assert_allclose(a["weight"], b["weight"], atol=1e-5)
    np.testing.assert_array_equal(a["lam"], b["lam"])
