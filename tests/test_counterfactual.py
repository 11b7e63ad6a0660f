"""Counterfactual promises: masks remove exactly the chosen examples; changes and flips are measured right."""

import numpy as np
import pandas as pd
import pytest

from dmflow.core.tables import BRITTLENESS, CF_CHANGES, CF_FLIPS
from dmflow.evaluation.counterfactual import analyse, design, slope, spread_targets
from dmflow.store.masks import subset_size


def _weights(n=60, t=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, t)).astype(np.float32), rng.normal(size=t).astype(np.float32)


def test_top_k_masks_exclude_exactly_the_largest_positive_weights_of_the_base():
    weight, bias = _weights()
    masks, cases = design(weight, bias, alpha=0.5, num_targets=4, ks=[1, 3, 5], seed=0)
    base = masks[0]
    assert base.sum() == subset_size(0.5, 60)
    assert len(cases) == 1 + 4 * 3 * 2 and cases.target.nunique() == 5  # base row has target -1
    for row in cases[cases.kind != "base"].itertuples():
        mask = masks[row.case]
        removed = np.flatnonzero(base & ~mask)
        assert not (mask & ~base).any()  # nothing added
        assert mask.sum() == base.sum() - row.removed == base.sum() - len(removed)
        assert row.predicted_change == np.float32(-weight[removed, row.target].sum()) or np.isclose(
            row.predicted_change, -weight[removed, row.target].sum(), atol=1e-5
        )
        if row.kind == "top":
            in_base = np.flatnonzero(base)
            positive = in_base[weight[in_base, row.target] > 0]
            best = positive[np.argsort(-weight[positive, row.target])][: row.k]
            assert set(removed) == set(best)


def test_design_is_deterministic_and_targets_spread_over_margins():
    weight, bias = _weights()
    a, ca = design(weight, bias, alpha=0.5, num_targets=4, ks=[2], seed=1)
    b, cb = design(weight, bias, alpha=0.5, num_targets=4, ks=[2], seed=1)
    assert np.array_equal(a, b) and ca.equals(cb)
    preds = np.array([5.0, -1.0, 3.0, 0.0, 10.0])
    assert list(spread_targets(preds, 3)) == [1, 2, 4]


def test_the_slope_is_how_many_times_the_predicted_change_the_actual_one_is():
    predicted = np.array([-1.0, -2.0, 0.0, -4.0])
    assert slope(predicted, 1.6 * predicted + 0.3) == pytest.approx(1.6)
    assert slope(predicted, predicted) == pytest.approx(1.0)
    assert np.isnan(slope(np.zeros(4), predicted)) and np.isnan(slope(predicted[:1], predicted[:1]))


def test_analyse_measures_changes_flips_and_brittleness():
    # 2 targets, ks [1, 2]: target 0 flips at k=2 (top only), target 1 never flips
    cases = pd.DataFrame.from_records(
        [
            dict(case=0, kind="base", target=-1, k=0, removed=0, predicted_change=0.0),
            dict(case=1, kind="top", target=0, k=1, removed=1, predicted_change=-1.0),
            dict(case=2, kind="random", target=0, k=1, removed=1, predicted_change=0.0),
            dict(case=3, kind="top", target=0, k=2, removed=2, predicted_change=-3.0),
            dict(case=4, kind="random", target=0, k=2, removed=2, predicted_change=-0.1),
            dict(case=5, kind="top", target=1, k=1, removed=1, predicted_change=-0.5),
            dict(case=6, kind="random", target=1, k=1, removed=1, predicted_change=0.0),
            dict(case=7, kind="top", target=1, k=2, removed=2, predicted_change=-1.0),
            dict(case=8, kind="random", target=1, k=2, removed=2, predicted_change=0.0),
        ]
    )
    cases["predicted_base"] = np.where(cases.target < 0, np.nan, 1.0)  # as design() adds it
    base = np.array([2.0, 5.0])
    change = {
        1: (-1.2, 0),
        2: (0.1, 0),
        3: (-3.1, 0),
        4: (-0.2, 0),
        5: (0, -0.4),
        6: (0, 0.1),
        7: (0, -1.1),
        8: (0, 0.0),
    }
    margins = np.zeros((9, 3, 2), np.float32)
    margins[0] = base
    for case, (d0, d1) in change.items():
        margins[case] = base + np.array([d0, d1])
    margins += np.array([0.0, 0.05, -0.05])[None, :, None]  # seed noise, mean zero
    status = np.zeros((9, 3), np.uint8)
    rows, flips, brittle, summary = analyse(cases, margins, status)
    got = dict(zip(rows.case, rows.actual_change))
    for case, (d0, d1) in change.items():
        assert np.isclose(got[case], d0 + d1, atol=1e-5)
    assert summary["correlation_predicted_actual"] > 0.95
    predicted = rows.predicted_change.to_numpy()
    expected = np.polyfit(predicted, rows.actual_change.to_numpy(), 1)[0]
    assert summary["slope_actual_vs_predicted"] == pytest.approx(expected) and 1.0 < expected < 1.2
    top = rows[rows.kind == "top"]
    assert summary["slope_actual_vs_predicted_top"] == pytest.approx(
        np.polyfit(top.predicted_change, top.actual_change, 1)[0]
    )
    assert summary["flip_rate_top"] == {1: 0.0, 2: 0.5} and summary["flip_rate_random"] == {1: 0.0, 2: 0.0}
    assert dict(zip(brittle.target, brittle.smallest_k.fillna(-1))) == {0: 2, 1: -1}
    for table, spec in ((rows, CF_CHANGES), (flips, CF_FLIPS), (brittle, BRITTLENESS)):
        assert list(spec.check(table, where=spec.what).columns) == spec.names  # as declared: the stage writes them

    calm = margins.copy()
    calm[1:] = margins[0]  # no removal changes anything: no target flips at any k
    _, _, brittle, calm_summary = analyse(cases, calm, status)
    assert brittle.smallest_k.isna().all() and len(brittle) == 2
    assert np.isnan(calm_summary["correlation_predicted_actual"])  # undefined, not a warning
    assert BRITTLENESS.check(brittle, where="brittleness.csv").smallest_k.dtype == np.float64  # NaN, not None
