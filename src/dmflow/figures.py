"""Matplotlib figures (PNG) for the evaluation, learning curve and counterfactual stages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dmflow.io import atomic_path  # noqa: E402
from dmflow.store import Store  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(Path(path), ".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def evaluation_figure(pred: np.ndarray, store: Store, table: pd.DataFrame, path: Path, num_targets: int = 4) -> None:
    """Predicted vs actual (seed-mean) margin for a few targets, and the LDS histogram."""
    ok = store.ok
    margins = np.asarray(store.margins)
    mean = np.where(ok[:, :, None], margins, np.nan)
    mean = np.nanmean(mean, axis=1)
    fig, axes = plt.subplots(1, num_targets + 1, figsize=(4 * (num_targets + 1), 3.6))
    scored = table[np.isfinite(table.lds_mean)].sort_values("lds_mean")
    picks = scored.target.to_numpy()[np.linspace(0, len(scored) - 1, num_targets).round().astype(int)] if len(scored) else []
    for ax, t in zip(axes[:-1], picks):
        ax.scatter(pred[:, t], mean[:, t], s=6, alpha=0.5)
        lo, hi = np.nanmin([pred[:, t].min(), np.nanmin(mean[:, t])]), np.nanmax([pred[:, t].max(), np.nanmax(mean[:, t])])
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
    _save(fig, path)


def learning_curve_figure(table: pd.DataFrame, path: Path) -> None:
    """LDS vs number of fit models, with the noise ceilings."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(table.num_models, table.lds_mean, "o-", label="LDS vs seed mean")
    ax.plot(table.num_models, table.lds_single, "s-", label="LDS vs one seed")
    ax.axhline(table.ceiling_mean.iloc[-1], color="C0", ls="--", lw=1, label="ceiling (seed mean)")
    ax.axhline(table.ceiling_single.iloc[-1], color="C1", ls="--", lw=1, label="ceiling (one seed)")
    ax.set_xscale("log")
    ax.set_xlabel("models used for the fit")
    ax.set_ylabel("mean LDS over targets")
    ax.set_title("Learning curve")
    ax.legend(fontsize=8)
    _save(fig, path)


def counterfactual_figure(rows: pd.DataFrame, flips: pd.DataFrame, summary: dict, path: Path) -> None:
    """Predicted vs actual margin change, and flip rate vs k for top-k vs random removal."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("top", "o"), ("random", "x")):
        part = rows[rows.kind == kind]
        a.scatter(part.predicted_change, part.actual_change, s=14, marker=marker, label=f"{kind}-k removed")
    lo = float(np.nanmin([rows.predicted_change.min(), rows.actual_change.min()]))
    hi = float(np.nanmax([rows.predicted_change.max(), rows.actual_change.max()]))
    a.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1)
    a.set_xlabel("predicted margin change (datamodel)")
    a.set_ylabel(f"actual margin change (mean of {summary['replicates']} seeds)")
    a.set_title(f"Counterfactuals: r = {summary['correlation_predicted_actual']:.2f} (N={summary['num_targets']} targets)")
    a.legend(fontsize=8)
    for kind in ("top", "random"):
        if kind in flips:
            b.plot(flips.k, flips[kind], "o-", label=f"{kind}-k removed")
    b.set_xlabel("k (training examples removed)")
    b.set_ylabel("flipped (of targets correct on the base subset)")
    b.set_ylim(-0.02, 1.02)
    b.set_title("Flips: top-k vs random removal")
    b.legend(fontsize=8)
    _save(fig, path)


def brittleness_figure(brittleness: pd.DataFrame, ks: Sequence[int], path: Path) -> None:
    """Histogram of the smallest k whose removal flips a correct prediction (or none)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    labels = [str(k) for k in ks] + ["none"]
    counts = [int((brittleness.smallest_k == k).sum()) for k in ks] + [int(brittleness.smallest_k.isna().sum())]
    ax.bar(labels, counts)
    ax.set_xlabel("smallest k whose top-k removal flips the prediction")
    ax.set_ylabel("targets (correct on the base subset)")
    ax.set_title("Data support (brittleness)")
    _save(fig, path)
