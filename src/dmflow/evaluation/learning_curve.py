"""The learning curve: would more models pay off? Refit on the first m/8, m/4, m/2, m rows.

Each fraction repeats the whole fit (validation split inside those rows, lambda path,
choice, refit) on the first rows of the fit store, i.e. on the models an earlier,
smaller run would have had, and is scored on the same eval masks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from dmflow.core.budgets import CURVE_TARGETS_PER_PASS
from dmflow.core.progress import Progress
from dmflow.core.tables import CURVE_SCORES, LEARNING_CURVE
from dmflow.evaluation.metrics import predict, score
from dmflow.lasso.accumulate import count_moments
from dmflow.lasso.path import fit_from_moments
from dmflow.lasso.settings import FitSettings, split_validation_rows
from dmflow.store.formats import Datamodels, Store
from dmflow.store.schema import usable_rows

log = logging.getLogger(__name__)


def _refit_and_predict(
    fit_store: Store,
    eval_store: Store,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: FitSettings,
    targets_per_pass: int,
    progress: Progress | None,
) -> np.ndarray:
    """Fit every target on the given rows (their moments once, then passes of targets) and predict the eval masks
    without the bias (no correlation depends on it; as ``evaluate`` correlates them)."""
    num_targets = fit_store.manifest["num_targets"]
    fit, val = count_moments(
        fit_store.masks, fit_store.margins[:, 0, :], [fit_rows, val_rows], device=settings.torch_device
    )
    pred = np.empty((eval_store.masks.shape[0], num_targets), dtype=np.float32)
    for start in range(0, num_targets, targets_per_pass):
        cols = slice(start, min(start + targets_per_pass, num_targets))
        fitted = fit_from_moments(fit.select(cols), val.select(cols), settings=settings, progress=progress)
        pred[:, cols] = predict(eval_store.masks, fitted["weight"], np.zeros(fitted["weight"].shape[1], np.float32))
    return pred


def refits(fractions: Sequence[float], *, datamodels: Datamodels | None) -> int:
    """How many of the fractions ``learning_curve`` refits (all but 1.0 when the datamodels stand in for it)."""
    return sum(1 for f in fractions if not (f == 1.0 and datamodels is not None))


def learning_curve(
    fit_store: Store,
    eval_store: Store,
    fractions: Sequence[float],
    *,
    settings: FitSettings,
    seed: int,
    targets_per_pass: int = CURVE_TARGETS_PER_PASS,
    datamodels: Datamodels | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per fraction: number of fit models and the mean/median scores on the eval masks.

    ``datamodels`` (the workflow's own fit on all rows) stands in for fraction 1.0,
    which would repeat exactly that fit. ``progress`` counts targets refit (``refits(...)``
    fractions times the targets, in all).
    """
    m = fit_store.masks.shape[0]
    rows_ok = usable_rows(fit_store.status)
    records = []
    for fraction in sorted(fractions):
        first = int(round(fraction * m))
        rows = rows_ok[rows_ok < first]
        fit_rows, val_rows = split_validation_rows(
            rows, settings.val_fraction, seed=seed, alpha=fit_store.manifest["alpha"]
        )
        if fraction == 1.0 and datamodels is not None:
            pred = predict(eval_store.masks, datamodels.weight, np.zeros(datamodels.weight.shape[1], np.float32))
        else:
            pred = _refit_and_predict(fit_store, eval_store, fit_rows, val_rows, settings, targets_per_pass, progress)
        scores = score(pred, eval_store)
        record = {"fraction": float(fraction), "num_models": first, "num_usable": len(rows)}
        for key in CURVE_SCORES:
            record[key] = float(np.nanmean(scores[key]))
            record[f"{key}_median"] = float(np.nanmedian(scores[key]))
        records.append(record)
        log.info("%d models: LDS vs seed mean %.3f, vs one seed %.3f", first, record["lds_mean"], record["lds_single"])
    return pd.DataFrame.from_records(records, columns=LEARNING_CURVE.names)
