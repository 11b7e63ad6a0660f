"""Galleries of training examples and targets, and the embedding scatter (matplotlib, no pyplot state).

Every gallery shows the samples as the source gave them (``X_train_raw``, ``X_target_raw``
of ``data.npz``: raw pixels, 0..16 for digits and 0..255 for images), all in one fixed
value range, so that a faint image looks faint and a digit looks like a digit.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Pictures:
    """The training examples and targets as images [N, C, H, W] (C = 1 or 3), in the source's values,
    and the value range [low, high] that every picture is drawn in."""

    train: np.ndarray
    target: np.ndarray
    low: float
    high: float


def value_range(*arrays: np.ndarray) -> tuple[float, float]:
    """The source's value range: 0..255 for uint8 pixels, else the smallest and largest finite value of all arrays."""
    if all(a.dtype == np.uint8 for a in arrays):
        return 0.0, 255.0
    low = min((float(np.min(a, where=np.isfinite(a), initial=np.inf)) for a in arrays), default=np.inf)
    high = max((float(np.max(a, where=np.isfinite(a), initial=-np.inf)) for a in arrays), default=-np.inf)
    if not low <= high:  # no finite value
        return 0.0, 1.0
    return (low, high) if high > low else (low, low + 1.0)


def pictures(train: np.ndarray | None, target: np.ndarray | None) -> Pictures | None:
    """``Pictures`` of images [N, C, H, W] (``dmflow.data.prepare.as_images``), or None when the samples are not images."""
    if train is None or target is None:
        return None
    return Pictures(train, target, *value_range(train, target))


def as_image(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """One image [C, H, W] as [H, W] (greyscale) or [H, W, 3], mapped from [low, high] to 0..1 (clipped)."""
    x = (np.asarray(x, dtype=np.float64) - low) / (high - low)
    x = np.clip(x, 0.0, 1.0)
    return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)


def _picture(pics: Pictures | None, part: str, index: int) -> np.ndarray | None:
    if pics is None:
        return None
    return as_image(getattr(pics, part)[index], pics.low, pics.high)


def _show(ax: Axes, image: np.ndarray | None, title: str, color: str = "black") -> None:
    if image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, color=color)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)


def influencer_gallery(
    influencers: Sequence[tuple[int, np.ndarray, np.ndarray]],
    weight: np.ndarray,
    data: dict,
    *,
    target_ids: np.ndarray,
    k: int,
    pics: Pictures | None,
) -> Figure:
    """Per target: the target, its top-k helpers (green) and top-k harmers (red), with weights.

    ``influencers`` holds (target index, helper indices, harmer indices) per row of the
    gallery; ``weight`` [n, T] the datamodels, ``data`` the arrays of ``data.npz`` (labels),
    ``pics`` the images (None: titles only).
    """
    rows = max(len(influencers), 1)
    fig = Figure(figsize=(1.3 * (1 + 2 * k), 1.55 * rows))
    axes = fig.subplots(rows, 1 + 2 * k, squeeze=False)
    for r, (t, helpers, harmers) in enumerate(influencers):
        _show(
            axes[r, 0],
            _picture(pics, "target", t),
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
                        _picture(pics, "train", i),
                        f"y={int(data['y_train'][i])} w={weight[i, t]:+.3f}",
                        color,
                    )
                else:
                    ax.axis("off")
    fig.suptitle(
        f"Top {k} helpers (green) and harmers (red) per target; w = datamodel weight (margin units)", fontsize=10
    )
    return fig


def pair_gallery(pairs: pd.DataFrame, pics: Pictures | None, *, headline: str | None = None) -> Figure:
    """Leakage candidates (rows of the leakage table): each target beside its candidate training example, by rank.

    ``headline``: the sentence on top (whether any candidate stands out). A pair whose row has
    ``stands_out`` true is drawn in red, with the robust z of its score.
    """
    cols = 5
    rows = max(1, -(-len(pairs) // cols))
    lines = [
        *(textwrap.wrap(headline, width=30 * cols) if headline else []),
        "Leakage candidates by score: target (blue; red where it stands out) and training example (green)",
        "sim = input-space similarity, w = datamodel weight (#its rank among the target's weights)",
    ]
    header = 0.18 * len(lines) + 0.2  # inches above the first row's titles
    fig = Figure(figsize=(2.8 * cols, 2.0 * rows + header))
    fig.subplots_adjust(top=1 - header / (2.0 * rows + header))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, row in enumerate(pairs.itertuples()):
        r, c = divmod(n, cols)
        a, b = axes[r, 2 * c], axes[r, 2 * c + 1]
        a.axis("on")
        b.axis("on")
        out = bool(getattr(row, "stands_out", False))
        _show(
            a,
            _picture(pics, "target", row.target),
            f"#{row.rank} score {row.score:.2f}\ntarget {row.target_id}\ny={row.target_label}"
            + (f" z={row.robust_z:.1f}" if out else ""),
            "red" if out else "blue",
        )
        _show(
            b,
            _picture(pics, "train", row.train_index),
            f"train {row.train_id} y={row.train_label}\nsim {row.similarity:.3f}\nw {row.weight:+.2f} (#{row.weight_rank})",
            "green",
        )
    fig.suptitle("\n".join(lines), fontsize=10, y=0.995)
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


def component_ends_gallery(ends: pd.DataFrame, pics: Pictures | None) -> Figure:
    """For each component, the training examples at its negative and positive ends (the component-ends table)."""
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
                _picture(pics, "train", row.train_index),
                f"PC{comp} y={row.train_label}\n{row.loading:+.3f}",
                "red" if row.end == "negative" else "green",
            )
    fig.suptitle(
        "Training examples at both ends of each principal component (negative left, positive right)", fontsize=10
    )
    return fig
