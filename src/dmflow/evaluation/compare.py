"""Every method side by side: the datamodels (and their learning curve) and the baselines, by compute.

One row per method (and per point of a curve over the model count: the datamodels' learning
curve, TRAK's ``trak_models`` list): models trained, seconds, LDS vs one
seed and vs the seed mean, and the fraction of the noise ceiling (Pearson vs the seed
mean, as ``metrics.summarise`` reports it), all from the summaries each was scored into.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from dmflow.core.tables import COMPARE
from dmflow.evaluation.metrics import fraction_of_ceiling


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
    """The comparison table: the datamodels' learning-curve points, the datamodels, each baseline's points.

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
    baselines : dict of name to (summary, info), or to a list of them
        Each baseline's scored summary (``evaluation/{alpha}/methods/NAME.json``) and its record
        (``baselines/NAME.json``, or one of its ``points``: ``models_trained``, ``seconds``); a list
        (a curve over the model count, TRAK's) gives one row per point, in its order, each named NAME.

    Returns
    -------
    DataFrame
        ``dmflow.core.tables.COMPARE``; ``seconds`` NaN where not recorded.
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
    for name, points in (baselines or {}).items():
        for summary, info in [points] if isinstance(points, tuple) else points:
            rows.append(_row(name, info["models_trained"], info["seconds"], summary))
    table = pd.DataFrame.from_records(rows, columns=COMPARE.names)
    # None (a fraction of a ceiling too low to divide by, seconds not recorded) is NaN in a float column
    return table.astype({c.name: float for c in COMPARE.columns if c.kind == "float"})


def _interpolate(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """y at ``at`` on the curve (x, y), linear in log x (x ascending, positive)."""
    return np.interp(np.log(at), np.log(x), y)


def equal_compute(table: pd.DataFrame, method: str = "trak") -> str | None:
    """One sentence on the datamodels against ``method`` at equal compute, from the comparison table:
    at each of the method's points, the datamodels' LDS vs the seed mean at the same compute (their
    learning curve, linear in log compute, where it reaches), who is ahead, and where the two curves
    cross, if they do. Compute is seconds where every row of both has them, else models trained.
    None where the table has no row of ``method`` or no datamodels row with compute > 0.
    """
    dm = table[table.method.str.startswith("datamodels")]
    other = table[table.method == method]
    both = pd.concat([dm, other])
    key = "seconds" if np.isfinite(both.seconds.to_numpy(dtype=float)).all() else "models_trained"
    unit = "s" if key == "seconds" else "models"
    dm = dm[dm[key].astype(float) > 0].sort_values(key)
    other = other[other[key].astype(float) > 0].sort_values(key)
    if dm.empty or other.empty:
        return None
    dx, dy = dm[key].to_numpy(dtype=float), dm.lds_mean.to_numpy(dtype=float)
    ox, oy = other[key].to_numpy(dtype=float), other.lds_mean.to_numpy(dtype=float)

    def fmt(x: float) -> str:
        return f"{x:.3g} {unit}" if unit == "s" else f"{int(round(x))} {unit}"

    lo, hi = max(dx[0], ox[0]), min(dx[-1], ox[-1])
    if lo > hi:
        cheaper, dearer = (method, "the datamodels") if ox[-1] < dx[0] else ("the datamodels", method)
        return (
            f"At equal compute: the curves do not overlap ({cheaper} at most {fmt(min(ox[-1], dx[-1]))}, "
            f"{dearer} from {fmt(max(ox[0], dx[0]))}), so they are not compared at equal compute: {method} "
            f"reaches LDS {oy[-1]:.3f} at {fmt(ox[-1])}, the datamodels {dy[0]:.3f} at {fmt(dx[0])} "
            f"and {dy[-1]:.3f} at {fmt(dx[-1])}."
        )
    xs = np.unique(np.concatenate([dx, ox]))
    xs = xs[(xs >= lo) & (xs <= hi)]
    diff = _interpolate(dx, dy, xs) - _interpolate(ox, oy, xs)
    points = [
        f"{fmt(x)}: datamodels {_interpolate(dx, dy, np.array([x]))[0]:.3f} vs {method} {y:.3f}"
        for x, y in zip(ox, oy)
        if lo <= x <= hi
    ]
    crossings = []
    nonzero = np.flatnonzero(diff)
    for i, j in zip(nonzero, nonzero[1:]):  # a sign change between two measured leads (ties skipped)
        if np.sign(diff[i]) != np.sign(diff[j]):
            t = diff[i] / (diff[i] - diff[j])
            crossings.append(float(np.exp(np.log(xs[i]) + t * (np.log(xs[j]) - np.log(xs[i])))))
    if len(crossings) == 1:
        below, above = ("the datamodels", method) if diff[-1] < 0 else (method, "the datamodels")
        verdict = f"the curves cross at about {fmt(crossings[0])}: {below} ahead below it, {above} above it"
    elif crossings:
        verdict = "the curves cross at about " + ", ".join(fmt(x) for x in crossings)
    elif (diff > 0).all():
        verdict = f"the datamodels are ahead of {method} everywhere both were measured: the curves do not cross"
    elif (diff < 0).all():
        verdict = f"{method} is ahead of the datamodels everywhere both were measured: the curves do not cross"
    else:
        verdict = "the curves touch but do not cross"
    shown = "; ".join(points) if points else f"no {method} point falls inside the datamodels' curve"
    return (
        f"At equal compute ({fmt(lo)} to {fmt(hi)}, where both curves were measured; LDS vs seed mean, the "
        f"datamodels' learning curve interpolated in log compute): {shown}; {verdict}."
    )
