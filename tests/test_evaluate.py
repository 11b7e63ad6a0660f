"""Evaluation promises: correct correlation/ceiling arithmetic, and a planted truth is recovered."""

import numpy as np
import pytest

from dmflow.evaluate import ceilings, pearson, replicate_agreement, score, spearman
from dmflow.masks import draw_masks
from dmflow.store import Store


def test_pearson_and_spearman_against_hand_computed_values():
    a = np.array([[1.0], [2.0], [3.0], [4.0]])
    b = np.array([[2.0], [4.0], [5.0], [4.0]])
    # Pearson by hand: deviations a (-1.5,-.5,.5,1.5), b (-1.75,.25,1.25,.25): products sum 3.5, squares 5 and 4.75
    assert pearson(a, b)[0] == pytest.approx(3.5 / np.sqrt(5 * 4.75))
    # ties in b get average ranks (1, 2.5, 4, 2.5)
    assert spearman(a, b)[0] == pytest.approx(pearson(a, np.array([[1], [2.5], [4], [2.5]]))[0])
    assert spearman(a, a ** 3)[0] == pytest.approx(1.0)
    assert np.isnan(pearson(a, np.ones((4, 1)))[0])  # constant column: undefined, not a crash


def test_pearson_ignores_missing_rows_column_by_column():
    a = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [9.0, 4.0]])
    b = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [np.nan, 4.0]])
    np.testing.assert_allclose(pearson(a, b), [1.0, 1.0])


def test_ceilings_follow_spearman_brown():
    single, mean = ceilings(np.array([0.64, 0.0, 1.0]), replicates=4)
    np.testing.assert_allclose(single, [0.8, 0.0, 1.0])
    np.testing.assert_allclose(mean, np.sqrt([4 * 0.64 / (1 + 3 * 0.64), 0.0, 1.0]))


def planted_store(noise: float, m=600, n=50, t=6, reps=4, seed=0):
    rng = np.random.default_rng(seed)
    masks = draw_masks(n, 0.5, m, rng)
    w = rng.normal(size=(n, t))
    signal = masks @ w + 3.0
    margins = (signal[:, None, :] + noise * rng.normal(size=(m, reps, t))).astype(np.float32)
    status = np.zeros((m, reps), np.uint8)
    store = Store(None, {}, masks, margins, status, np.zeros((m, reps)), np.zeros((m, reps)))
    return store, w, signal


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
    from dmflow.evaluate import _fraction

    assert _fraction(0.45, 0.9) == 0.5
    assert _fraction(0.05, 0.01) is None  # a ratio of two noise figures says nothing
