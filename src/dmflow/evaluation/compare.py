"""Every method side by side: the datamodels (and their learning curve) and the baselines, by compute.

One row per method (and per learning-curve point): models trained, seconds, LDS vs one
seed and vs the seed mean, and the fraction of the noise ceiling (Pearson vs the seed
mean, as ``metrics.summarise`` reports it), all from the summaries each was scored into.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from dmflow.evaluation.metrics import fraction_of_ceiling

COLUMNS = ("method", "models_trained", "seconds", "lds_single", "lds_mean", "fraction_of_ceiling")
"""The comparison table's columns (``evaluation/{alpha}/compare.csv``)."""


def _row(method: str, models: int, seconds: float | None, summary: Mapping) -> dict:
    return {
        "method": method,
        "models_trained": int(models),
        "seconds": np.nan if seconds is None else float(seconds),
        "lds_single": summary["lds_single"]["mean"],
        "lds_mean": summary["lds_mean"]["mean"],
        "fraction_of_ceiling": summary["fraction_of_ceiling"]["pearson_mean"],
    }


def comparison_table(
    datamodels: Mapping,
    *,
    fit_models: int,
    fit_seconds: float | None,
    curve: pd.DataFrame | None = None,
    baselines: Mapping[str, tuple[Mapping, Mapping]] | None = None,
) -> pd.DataFrame:
    """The comparison table: the datamodels' learning-curve points, the datamodels, each baseline.

    Parameters
    ----------
    datamodels : dict
        The evaluate stage's summary (``evaluation/{alpha}/summary.json``).
    fit_models : int
        Models in the fit store (the datamodels' models trained).
    fit_seconds : float or None
        Their training wall-seconds (the fit store manifest's ``train_seconds``; None: not recorded).
        A learning-curve point of m models is counted ``fit_seconds * m / fit_models``.
    curve : DataFrame, optional
        The learning-curve table (``num_models``, ``lds_single``, ``lds_mean``, ``pearson_mean``,
        ``ceiling_mean``); its point with every fit model is the datamodels' own row.
    baselines : dict of name to (summary, info)
        Each baseline's scored summary (``evaluation/{alpha}/methods/NAME.json``) and its record
        (``baselines/NAME.json``: ``models_trained``, ``seconds``).

    Returns
    -------
    DataFrame
        ``COLUMNS``; ``seconds`` NaN where not recorded.
    """
    rows = []
    if curve is not None:
        for r in curve.itertuples():
            if int(r.num_models) >= fit_models:
                continue
            seconds = None if fit_seconds is None else fit_seconds * r.num_models / fit_models
            rows.append(
                {
                    "method": f"datamodels ({int(r.num_models)} models)",
                    "models_trained": int(r.num_models),
                    "seconds": np.nan if seconds is None else float(seconds),
                    "lds_single": float(r.lds_single),
                    "lds_mean": float(r.lds_mean),
                    "fraction_of_ceiling": fraction_of_ceiling(r.pearson_mean, r.ceiling_mean),
                }
            )
    rows.append(_row("datamodels", fit_models, fit_seconds, datamodels))
    for name, (summary, info) in (baselines or {}).items():
        rows.append(_row(name, info["models_trained"], info["seconds"], summary))
    return pd.DataFrame.from_records(rows, columns=list(COLUMNS))
