"""Figures of the evaluation, the learning curve and the counterfactuals (matplotlib, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def evaluation_figure(pred: np.ndarray, mean: np.ndarray, table: pd.DataFrame, *, num_targets: int = 4) -> Figure:
    """Predicted vs actual (seed-mean) margin for a few targets, and the LDS histogram.

    ``pred`` and ``mean`` [m, T]: predicted and seed-mean margins of the eval masks;
    ``table`` the per-target evaluation table.
    """
    fig = Figure(figsize=(4 * (num_targets + 1), 3.6))
    axes = fig.subplots(1, num_targets + 1)
    scored = table[np.isfinite(table.lds_mean)].sort_values("lds_mean")
    picks = (
        scored.target.to_numpy()[np.linspace(0, len(scored) - 1, num_targets).round().astype(int)]
        if len(scored)
        else []
    )
    for ax, t in zip(axes[:-1], picks):
        ax.scatter(pred[:, t], mean[:, t], s=6, alpha=0.5)
        lo, hi = (
            np.nanmin([pred[:, t].min(), np.nanmin(mean[:, t])]),
            np.nanmax([pred[:, t].max(), np.nanmax(mean[:, t])]),
        )
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        row = table.iloc[int(t)]
        ax.set_title(f"target {int(row.target_id)}: LDS {row.lds_mean:.2f}")
        ax.set_xlabel("predicted margin (datamodel)")
        ax.set_ylabel("actual margin (seed mean)")
    ax = axes[-1]
    ax.hist(table.lds_mean.dropna(), bins=30, alpha=0.7, label="vs seed mean")
    ax.hist(table.lds_single.dropna(), bins=30, alpha=0.5, label="vs one seed")
    ax.axvline(np.nanmean(table.ceiling_mean), color="k", ls="--", lw=1, label="mean ceiling (seed mean)")
    ax.set_xlabel("LDS (Spearman over eval masks)")
    ax.set_ylabel("targets")
    ax.set_title("LDS per target")
    ax.legend(fontsize=8)
    return fig


def learning_curve_figure(table: pd.DataFrame) -> Figure:
    """LDS vs number of fit models, with the noise ceilings (the learning-curve table)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    ax.plot(table.num_models, table.lds_mean, "o-", label="LDS vs seed mean")
    ax.plot(table.num_models, table.lds_single, "s-", label="LDS vs one seed")
    ax.axhline(table.ceiling_mean.iloc[-1], color="C0", ls="--", lw=1, label="ceiling (seed mean)")
    ax.axhline(table.ceiling_single.iloc[-1], color="C1", ls="--", lw=1, label="ceiling (one seed)")
    ax.set_xscale("log")
    ax.set_xlabel("models used for the fit")
    ax.set_ylabel("mean LDS over targets")
    ax.set_title("Learning curve")
    ax.legend(fontsize=8)
    return fig


def counterfactual_figure(rows: pd.DataFrame, flips: pd.DataFrame, summary: dict) -> Figure:
    """Predicted vs actual margin change, and flip rate vs k for top-k vs random removal."""
    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    for kind, marker in (("top", "o"), ("random", "x")):
        part = rows[rows.kind == kind]
        a.scatter(part.predicted_change, part.actual_change, s=14, marker=marker, label=f"{kind}-k removed")
    lo = float(np.nanmin([rows.predicted_change.min(), rows.actual_change.min()]))
    hi = float(np.nanmax([rows.predicted_change.max(), rows.actual_change.max()]))
    a.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1)
    a.set_xlabel("predicted margin change (datamodel)")
    a.set_ylabel(f"actual margin change (mean of {summary['replicates']} seeds)")
    slope = summary.get("slope_actual_vs_predicted", np.nan)
    a.set_title(
        f"Counterfactuals (N={summary['num_targets']} targets): r = {summary['correlation_predicted_actual']:.2f}\n"
        f"slope: actual change = {slope:.2f} x predicted",
        fontsize=10,
    )
    a.legend(fontsize=8)
    for kind in ("top", "random"):
        if kind in flips:
            b.plot(flips.k, flips[kind], "o-", label=f"{kind}-k removed")
    b.set_xlabel("k (training examples removed)")
    b.set_ylabel("flipped (of targets correct on the base subset)")
    b.set_ylim(-0.02, 1.02)
    b.set_title("Flips: top-k vs random removal")
    b.legend(fontsize=8)
    return fig


def brittleness_figure(brittleness: pd.DataFrame, ks: Sequence[int]) -> Figure:
    """Histogram of the smallest k whose removal flips a correct prediction (or none)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    labels = [str(k) for k in ks] + ["none"]
    counts = [int((brittleness.smallest_k == k).sum()) for k in ks] + [int(brittleness.smallest_k.isna().sum())]
    ax.bar(labels, counts)
    ax.set_xlabel("smallest k whose top-k removal flips the prediction")
    ax.set_ylabel("targets (correct on the base subset)")
    ax.set_title("Data support (brittleness)")
    return fig


def comparison_figure(table: pd.DataFrame, *, ceiling: float | None = None) -> Figure:
    """LDS vs the seed mean against compute: the datamodels' learning curve (line) and each
    baseline, a line with markers where it has several rows (TRAK over its model count, each
    point annotated with its models) else a point, over training wall-seconds where every row
    has them, else models trained.

    ``table``: the comparison table (``dmflow.core.tables.COMPARE``); rows whose method
    starts with ``datamodels`` form their curve, the rows of one other method its curve.
    """
    by_seconds = bool(np.isfinite(table.seconds.to_numpy(dtype=float)).all())
    x_key = "seconds" if by_seconds else "models_trained"
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    dm = table[table.method.str.startswith("datamodels")].sort_values(x_key)
    ax.plot(dm[x_key], dm.lds_mean, "o-", color="C0", label="datamodels (learning curve)")
    for r in dm.itertuples():
        ax.annotate(
            f"{r.models_trained}",
            (getattr(r, x_key), r.lds_mean),
            textcoords="offset points",
            xytext=(-8, 6),
            fontsize=7,
        )
    others = table[~table.method.str.startswith("datamodels")]
    for i, (name, points) in enumerate(others.groupby("method", sort=False)):
        points = points.sort_values(x_key)
        curve = len(points) > 1
        ax.plot(
            points[x_key],
            points.lds_mean,
            "s-" if curve else "s",
            ms=6 if curve else 8,
            color=f"C{i + 1}",
            label=f"{name} (over its model count)" if curve else name,
        )
        for r in points.itertuples():
            ax.annotate(
                f"{r.models_trained}" if curve else f"{name}: {r.models_trained} models",
                (getattr(r, x_key), r.lds_mean),
                textcoords="offset points",
                xytext=(6, -10) if curve else (6, 4),
                fontsize=7 if curve else 8,
                color=f"C{i + 1}" if curve else "black",
            )
    if ceiling is not None:
        ax.axhline(ceiling, color="grey", ls="--", lw=1, label="noise ceiling (seed mean)")
    if by_seconds:
        ax.set_xscale("log")
        ax.set_xlabel("training wall-seconds (all models; baselines: training + scoring)")
    else:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=-0.3, right=table.models_trained.max() * 3)
        ax.set_xlabel("models trained")
    ax.set_ylabel("mean LDS over targets (vs seed mean)")
    ax.set_title("Datamodels vs baselines: LDS against compute")
    ax.legend(fontsize=8, loc="lower right")
    return fig
