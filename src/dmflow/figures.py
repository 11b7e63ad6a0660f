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


def as_image(x: np.ndarray, image_shape: Sequence[int] | None = None) -> np.ndarray | None:
    """A displayable image ([H, W] or [H, W, 3], scaled to 0..1) from one sample, or None if it is not one."""
    x = np.asarray(x, dtype=np.float64)
    if image_shape:
        x = x.reshape(image_shape)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)):
        return None
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _show(ax: plt.Axes, image: np.ndarray | None, title: str, color: str = "black") -> None:
    if image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, color=color)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)


def _is_image_data(data: dict, image_shape: Sequence[int] | None) -> bool:
    return len(data["X_train"]) > 0 and as_image(data["X_train"][0], image_shape) is not None


def influencer_gallery(weight: np.ndarray, data: dict, target_ids: np.ndarray, targets: Sequence[int], k: int,
                       image_shape: Sequence[int] | None, path: Path) -> None:
    """Per sampled target: the target, its top-k helpers (green) and top-k harmers (red), with weights."""
    from dmflow.influence import top_influencers

    images = _is_image_data(data, image_shape)
    rows = max(len(targets), 1)
    fig, axes = plt.subplots(rows, 1 + 2 * k, figsize=(1.3 * (1 + 2 * k), 1.55 * rows), squeeze=False)
    for r, t in enumerate(targets):
        helpers, harmers = top_influencers(weight, int(t), k)
        x_t = data["X_target"][t]
        _show(axes[r, 0], as_image(x_t, image_shape) if images else None,
              f"target {int(target_ids[t])}\nlabel {int(data['y_target'][t])}", "blue")
        for j in range(k):
            for col, idx, color in ((1 + j, helpers, "green"), (1 + k + j, harmers, "red")):
                ax = axes[r, col]
                if j < len(idx):
                    i = idx[j]
                    _show(ax, as_image(data["X_train"][i], image_shape) if images else None,
                          f"y={int(data['y_train'][i])} w={weight[i, t]:+.3f}", color)
                else:
                    ax.axis("off")
    fig.suptitle(f"Top {k} helpers (green) and harmers (red) per target; w = datamodel weight (margin units)", fontsize=10)
    _save(fig, path)


def pair_gallery(pairs: pd.DataFrame, data: dict, image_shape: Sequence[int] | None, path: Path) -> None:
    """Leakage candidates: target beside its dominant training example, ranked by score."""
    images = _is_image_data(data, image_shape)
    cols = 5
    rows = max(1, -(-len(pairs) // cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.6 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, row in enumerate(pairs.itertuples()):
        r, c = divmod(n, cols)
        a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
        a.axis("on")
        b.axis("on")
        _show(a, as_image(data["X_target"][row.target], image_shape) if images else None,
              f"#{row.rank} target {row.target_id}\ny={row.target_label}", "blue")
        _show(b, as_image(data["X_train"][row.train_index], image_shape) if images else None,
              f"train {row.train_id} y={row.train_label}\nw={row.weight:.2f} share={row.share:.2f}", "green")
    fig.suptitle("Leakage candidates: target (blue) and its dominant training example (green)", fontsize=10)
    _save(fig, path)


def embedding_scatter(table: pd.DataFrame, ratio: np.ndarray, path: Path) -> None:
    """Targets in the first two principal components of their normalised datamodels, by class and by cluster."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    y2 = table.pc2 if "pc2" in table else np.zeros(len(table))
    for ax, key, title in ((axes[0], "label", "coloured by class"), (axes[1], "cluster", "coloured by spectral cluster")):
        points = ax.scatter(table.pc1, y2, c=table[key], cmap="tab10", s=8)
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)" if len(ratio) > 1 else "")
        ax.set_title(f"Datamodel embeddings, {title}")
        fig.colorbar(points, ax=ax, label=key)
    _save(fig, path)


def component_ends_gallery(ends: pd.DataFrame, data: dict, image_shape: Sequence[int] | None, path: Path) -> None:
    """For each component, the training examples at its negative and positive ends."""
    images = _is_image_data(data, image_shape)
    comps = sorted(ends.component.unique())
    k = int(ends["rank"].max()) if len(ends) else 1
    fig, axes = plt.subplots(len(comps), 2 * k, figsize=(1.2 * 2 * k, 1.5 * len(comps)), squeeze=False)
    for r, comp in enumerate(comps):
        part = ends[ends.component == comp]
        neg = part[part.end == "negative"].sort_values("rank", ascending=False)
        pos = part[part.end == "positive"].sort_values("rank")
        for col, row in enumerate(list(neg.itertuples()) + list(pos.itertuples())):
            _show(axes[r, col], as_image(data["X_train"][row.train_index], image_shape) if images else None,
                  f"PC{comp} y={row.train_label}\n{row.loading:+.3f}", "red" if row.end == "negative" else "green")
    fig.suptitle("Training examples at both ends of each principal component (negative left, positive right)", fontsize=10)
    _save(fig, path)
