"""Evaluation promises: correct correlation/ceiling arithmetic, and a planted truth is recovered."""

import numpy as np
import pytest

from dmflow.evaluation.metrics import (
    MIN_CEILING,
    ceilings,
    fraction_of_ceiling,
    pearson,
    predict,
    replicate_agreement,
    score,
    seed_mean,
    spearman,
)

from helpers import planted_eval_store as planted_store


def test_pearson_and_spearman_against_hand_computed_values():
    a = np.array([[1.0], [2.0], [3.0], [4.0]])
    b = np.array([[2.0], [4.0], [5.0], [4.0]])
    # Pearson by hand: deviations a (-1.5,-.5,.5,1.5), b (-1.75,.25,1.25,.25): products sum 3.5, squares 5 and 4.75
    assert pearson(a, b)[0] == pytest.approx(3.5 / np.sqrt(5 * 4.75))
    # ties in b get average ranks (1, 2.5, 4, 2.5)
    assert spearman(a, b)[0] == pytest.approx(pearson(a, np.array([[1], [2.5], [4], [2.5]]))[0])
    assert spearman(a, a**3)[0] == pytest.approx(1.0)
    assert np.isnan(pearson(a, np.ones((4, 1)))[0])  # constant column: undefined, not a crash


def test_pearson_ignores_missing_rows_column_by_column():
    a = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [9.0, 4.0]])
    b = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [np.nan, 4.0]])
    np.testing.assert_allclose(pearson(a, b), [1.0, 1.0])


def test_ceilings_follow_spearman_brown():
    single, mean = ceilings(np.array([0.64, 0.0, 1.0]), replicates=4)
    np.testing.assert_allclose(single, [0.8, 0.0, 1.0])
    np.testing.assert_allclose(mean, np.sqrt([4 * 0.64 / (1 + 3 * 0.64), 0.0, 1.0]))


def test_planted_truth_scores_near_one_without_noise():
    store, w, _ = planted_store(noise=1e-3)
    s = score((store.masks @ w + 3.0).astype(np.float32), store)
    assert s["lds_mean"].min() > 0.999 and s["pearson_single"].min() > 0.999
    assert s["replicate_corr"].min() > 0.999


def test_planted_noise_level_gives_the_matching_ceiling():
    store, w, signal = planted_store(noise=1.5, m=4000)
    expected_rho = signal.var(0) / (signal.var(0) + 1.5**2)
    s = score(signal.astype(np.float32), store)  # the perfect predictor
    np.testing.assert_allclose(s["replicate_corr"], expected_rho, atol=0.03)
    np.testing.assert_allclose(s["pearson_single"], s["ceiling_single"], atol=0.03)
    np.testing.assert_allclose(s["pearson_mean"], s["ceiling_mean"], atol=0.03)


def test_diverged_replicates_are_left_out():
    store, w, signal = planted_store(noise=0.1)
    store.margins[::7, 1] = np.nan
    store.status[::7, 1] = 1
    s = score(signal.astype(np.float32), store)
    assert np.isfinite(s["lds_mean"]).all() and np.isfinite(s["replicate_corr"]).all()
    assert replicate_agreement(store.margins, store.ok).min() > 0.99


def test_fraction_of_the_ceiling_is_withheld_where_the_ceiling_is_noise():
    assert fraction_of_ceiling(0.45, 0.9) == 0.5
    assert fraction_of_ceiling(0.05, MIN_CEILING / 10) is None  # a ratio of two noise figures says nothing


def test_the_seed_mean_leaves_out_diverged_replicates_and_a_prediction_is_mask_at_weight_plus_bias():
    margins = np.array([[[1.0, 2.0], [3.0, np.nan], [5.0, 6.0]], [[np.nan, np.nan], [7.0, 8.0], [9.0, 10.0]]])
    ok = np.array([[True, False, True], [False, True, False]])
    np.testing.assert_allclose(seed_mean(margins, ok), [[3.0, 4.0], [7.0, 8.0]])
    assert np.isnan(seed_mean(margins, np.zeros_like(ok))).all()  # no replicate left: undefined, not zero
    rng = np.random.default_rng(0)
    masks, weight, bias = (
        rng.random((5000, 7)) < 0.5,
        rng.normal(size=(7, 3)).astype(np.float32),
        np.ones(3, np.float32),
    )
    expected = masks.astype(np.float32) @ weight + bias
    np.testing.assert_allclose(predict(masks, weight, bias, block_rows=1000), expected, rtol=1e-6)
    # one mask: a matrix-vector product, which BLAS sums in another order than a row of the matrix product
    # (OpenBLAS's AVX2 kernels differ by ~1 ulp): equal to float32 rounding, not bit for bit
    np.testing.assert_allclose(predict(masks[0], weight, bias), expected[0], rtol=1e-6)
