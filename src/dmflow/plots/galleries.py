"""Galleries of training examples and targets, and the embedding scatter (matplotlib, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure


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


def _show(ax: Axes, image: np.ndarray | None, title: str, color: str = "black") -> None:
    if image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, color=color)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)


def _is_image_data(data: dict, image_shape: Sequence[int] | None) -> bool:
    return len(data["X_train"]) > 0 and as_image(data["X_train"][0], image_shape) is not None


def influencer_gallery(
    influencers: Sequence[tuple[int, np.ndarray, np.ndarray]],
    weight: np.ndarray,
    data: dict,
    *,
    target_ids: np.ndarray,
    k: int,
    image_shape: Sequence[int] | None,
) -> Figure:
    """Per target: the target, its top-k helpers (green) and top-k harmers (red), with weights.

    ``influencers`` holds (target index, helper indices, harmer indices) per row of the
    gallery; ``weight`` [n, T] the datamodels, ``data`` the arrays of ``data.npz``.
    """
    images = _is_image_data(data, image_shape)
    rows = max(len(influencers), 1)
    fig = Figure(figsize=(1.3 * (1 + 2 * k), 1.55 * rows))
    axes = fig.subplots(rows, 1 + 2 * k, squeeze=False)
    for r, (t, helpers, harmers) in enumerate(influencers):
        x_t = data["X_target"][t]
        _show(
            axes[r, 0],
            as_image(x_t, image_shape) if images else None,
            f"target {int(target_ids[t])}\nlabel {int(data['y_target'][t])}",
            "blue",
        )
        for j in range(k):
            for col, idx, color in ((1 + j, helpers, "green"), (1 + k + j, harmers, "red")):
                ax = axes[r, col]
                if j < len(idx):
                    i = idx[j]
                    _show(
                        ax,
                        as_image(data["X_train"][i], image_shape) if images else None,
                        f"y={int(data['y_train'][i])} w={weight[i, t]:+.3f}",
                        color,
                    )
                else:
                    ax.axis("off")
    fig.suptitle(
        f"Top {k} helpers (green) and harmers (red) per target; w = datamodel weight (margin units)", fontsize=10
    )
    return fig


def pair_gallery(pairs: pd.DataFrame, data: dict, image_shape: Sequence[int] | None) -> Figure:
    """Leakage candidates (rows of the leakage table): target beside its dominant training example, ranked by score."""
    images = _is_image_data(data, image_shape)
    cols = 5
    rows = max(1, -(-len(pairs) // cols))
    fig = Figure(figsize=(2.6 * cols, 1.7 * rows))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, row in enumerate(pairs.itertuples()):
        r, c = divmod(n, cols)
        a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
        a.axis("on")
        b.axis("on")
        _show(
            a,
            as_image(data["X_target"][row.target], image_shape) if images else None,
            f"#{row.rank} target {row.target_id}\ny={row.target_label}",
            "blue",
        )
        _show(
            b,
            as_image(data["X_train"][row.train_index], image_shape) if images else None,
            f"train {row.train_id} y={row.train_label}\nw={row.weight:.2f} share={row.share:.2f}",
            "green",
        )
    fig.suptitle("Leakage candidates: target (blue) and its dominant training example (green)", fontsize=10)
    return fig


def embedding_scatter(table: pd.DataFrame, ratio: np.ndarray) -> Figure:
    """Targets in the first two principal components of their normalised datamodels, by class and by cluster.

    ``table`` has per target pc1 (pc2), label and cluster; ``ratio`` the explained variance ratios.
    """
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    y2 = table.pc2 if "pc2" in table else np.zeros(len(table))
    for ax, key, title in (
        (axes[0], "label", "coloured by class"),
        (axes[1], "cluster", "coloured by spectral cluster"),
    ):
        points = ax.scatter(table.pc1, y2, c=table[key], cmap="tab10", s=8)
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)" if len(ratio) > 1 else "")
        ax.set_title(f"Datamodel embeddings, {title}")
        fig.colorbar(points, ax=ax, label=key)
    return fig


def component_ends_gallery(ends: pd.DataFrame, data: dict, image_shape: Sequence[int] | None) -> Figure:
    """For each component, the training examples at its negative and positive ends (the component-ends table)."""
    images = _is_image_data(data, image_shape)
    comps = sorted(ends.component.unique())
    k = int(ends["rank"].max()) if len(ends) else 1
    fig = Figure(figsize=(1.2 * 2 * k, 1.5 * len(comps)))
    axes = fig.subplots(len(comps), 2 * k, squeeze=False)
    for r, comp in enumerate(comps):
        part = ends[ends.component == comp]
        neg = part[part.end == "negative"].sort_values("rank", ascending=False)
        pos = part[part.end == "positive"].sort_values("rank")
        for col, row in enumerate(list(neg.itertuples()) + list(pos.itertuples())):
            _show(
                axes[r, col],
                as_image(data["X_train"][row.train_index], image_shape) if images else None,
                f"PC{comp} y={row.train_label}\n{row.loading:+.3f}",
                "red" if row.end == "negative" else "green",
            )
    fig.suptitle(
        "Training examples at both ends of each principal component (negative left, positive right)", fontsize=10
    )
    return fig
