"""Counterfactual retraining: do the datamodels predict what removing training examples does?

For N targets spread over predicted margins, start from one random base subset
(alpha*n examples), remove the k training examples with the largest positive weights
for that target (among those in the base), and as a control k random examples of the
base; retrain R seeds per case with the same training code. The datamodel predicts
the change of the target's margin as minus the sum of the removed weights; the
actual change is the R-seed mean margin minus the base's R-seed mean margin.

Headlines: the correlation r of actual and predicted changes says whether the datamodel
orders the removals right; the slope (least squares of actual on predicted, with an
intercept) says how large the actual changes are for a predicted one: 1 when the
datamodel's scale is right, above 1 when removing examples changes the margin more than
the sum of their weights predicts (the lasso shrinks weights towards 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dmflow.core.codes import STATUS_OK
from dmflow.core.seeds import SPLITS, alpha_key
from dmflow.core.tables import BRITTLENESS
from dmflow.evaluation.metrics import pearson, predict, seed_mean
from dmflow.store.masks import draw_masks


def spread_targets(predicted: np.ndarray, num: int) -> np.ndarray:
    """``num`` target indices at evenly spaced quantiles of the predicted margins (sorted by margin)."""
    order = np.argsort(predicted, kind="stable")
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(num, len(order)))).astype(int))
    return order[picks]


def design(
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    alpha: float,
    num_targets: int,
    ks: Sequence[int],
    seed: int,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Counterfactual masks bool [cases, n] and the case table; case 0 is the base subset.

    ``weight`` [n, T] and ``bias`` [T] are the datamodels. Per chosen target and k in
    ``ks``: a "top" case (its k largest positive weights in the base removed) and a
    "random" case (k random examples of the base removed).
    """
    n = weight.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence((seed, alpha_key(alpha), SPLITS["counterfactual"])))
    base = draw_masks(n, alpha, 1, rng=rng)[0]
    predicted_base = predict(base, weight, bias)
    targets = spread_targets(predicted_base, num_targets)
    masks, cases = [base], [dict(case=0, kind="base", target=-1, k=0, removed=0, predicted_change=0.0)]
    in_base = np.flatnonzero(base)
    for t in targets:
        w_in = weight[in_base, t]
        ranked = in_base[np.argsort(-w_in, kind="stable")]
        positive = ranked[weight[ranked, t] > 0]
        for k in ks:
            for kind in ("top", "random"):
                removed = (
                    positive[:k] if kind == "top" else rng.choice(in_base, size=min(k, len(in_base) - 1), replace=False)
                )
                mask = base.copy()
                mask[removed] = False
                masks.append(mask)
                cases.append(
                    dict(
                        case=len(cases),
                        kind=kind,
                        target=int(t),
                        k=int(k),
                        removed=len(removed),
                        predicted_change=float(-weight[removed, t].sum()),
                    )
                )
    table = pd.DataFrame.from_records(cases)
    table["predicted_base"] = [float(predicted_base[t]) if t >= 0 else np.nan for t in table.target]
    return np.stack(masks), table


def _pearson(predicted: pd.Series, actual: pd.Series) -> float:
    """``metrics.pearson`` of two columns [cases]: NaN where either is constant or under two cases."""
    return float(pearson(np.asarray(predicted)[:, None], np.asarray(actual)[:, None])[0])


def slope(predicted: np.ndarray, actual: np.ndarray) -> float:
    """The least-squares slope of ``actual`` on ``predicted``, with an intercept.

    Parameters
    ----------
    predicted, actual : float [cases]
        The datamodel's predicted margin changes and the retrained ones.

    Returns
    -------
    float
        How many times the predicted change the actual one is; NaN for fewer than two
        cases or when every prediction is the same.
    """
    predicted, actual = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
    spread = predicted - predicted.mean() if len(predicted) else predicted
    denominator = float(spread @ spread)
    return float(spread @ (actual - actual.mean()) / denominator) if len(predicted) > 1 and denominator > 0 else np.nan


def analyse(
    cases: pd.DataFrame, margins: np.ndarray, status: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Actual vs predicted changes per case, flip rates per k, and brittleness per target.

    margins [cases, R, T] and status [cases, R] come from the trained chunk; diverged
    replicates are left out of every mean.
    """
    ok = status == STATUS_OK
    means = seed_mean(margins, ok)  # [cases, T]
    base_mean = means[0]
    rows = cases[cases.kind != "base"].copy()
    t, c = rows.target.to_numpy(), rows.case.to_numpy()
    case_margins = np.where(ok[c], margins[c, :, t], np.nan)  # [cases, R]
    rows["base_margin"] = base_mean[t]
    rows["actual_change"] = means[c, t] - base_mean[t]
    base_sign = np.sign(base_mean[t])[:, None]
    flipped = np.sign(case_margins) != base_sign
    rows["flip_fraction"] = np.nanmean(np.where(np.isnan(case_margins), np.nan, flipped), axis=1)
    rows["flipped"] = rows.flip_fraction > 0.5
    rows["seeds_used"] = np.isfinite(case_margins).sum(1)
    correct = rows[rows.base_margin > 0]  # flips are counted on predictions that start out correct
    flips = (
        correct.groupby(["k", "kind"]).flipped.mean().unstack("kind").reindex(columns=["top", "random"]).reset_index()
    )
    brittle = []
    for target, group in correct[correct.kind == "top"].groupby("target"):
        hit = group[group.flipped].k
        brittle.append(
            {
                "target": int(target),
                "base_margin": float(group.base_margin.iloc[0]),
                "smallest_k": float(hit.min()) if len(hit) else np.nan,
            }
        )
    brittleness = pd.DataFrame.from_records(brittle, columns=BRITTLENESS.names)
    valid = np.isfinite(rows.actual_change)
    top = rows[valid & (rows.kind == "top")]
    summary = {
        "num_targets": int(rows.target.nunique()),
        "num_targets_correct": int(correct.target.nunique()),
        "replicates": int(margins.shape[1]),
        "ks": sorted(int(k) for k in rows.k.unique()),
        "correlation_predicted_actual": _pearson(rows.predicted_change[valid], rows.actual_change[valid]),
        "correlation_predicted_actual_top": _pearson(top.predicted_change, top.actual_change),
        "slope_actual_vs_predicted": slope(rows.predicted_change[valid], rows.actual_change[valid]),
        "slope_actual_vs_predicted_top": slope(top.predicted_change, top.actual_change),
        "flip_rate_top": {int(r.k): float(r.top) for r in flips.itertuples()},
        "flip_rate_random": {int(r.k): float(r.random) for r in flips.itertuples()},
        "diverged_models_excluded": int((~ok).sum()),
    }
    return rows, flips, brittleness, summary
