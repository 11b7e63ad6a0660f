"""Influencers: the training examples that most help and most hurt each target.

``weight[i, t] > 0`` means training example i raises target t's margin when it is in
the training subset (it "helps"); ``< 0`` means it lowers it ("harms").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmflow.core.tables import INFLUENCERS


def top_influencers(weight: np.ndarray, target: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k largest positive and the k most negative weights of one target (non-zero only)."""
    w = weight[:, target]
    order = np.argsort(-w, kind="stable")
    helpers = order[:k][w[order[:k]] > 0]
    harmers = order[::-1][:k][w[order[::-1][:k]] < 0]
    return helpers, harmers


def influencer_table(
    weight: np.ndarray, data: dict[str, np.ndarray], target_ids: np.ndarray, *, k: int
) -> pd.DataFrame:
    """One row per (target, direction, rank): the training example, its label and its weight."""
    records = []
    for t in range(weight.shape[1]):
        helpers, harmers = top_influencers(weight, t, k)
        for direction, idx in (("helps", helpers), ("harms", harmers)):
            for rank, i in enumerate(idx, start=1):
                records.append(
                    (
                        t,
                        int(target_ids[t]),
                        int(data["y_target"][t]),
                        direction,
                        rank,
                        int(i),
                        int(data["train_ids"][i]),
                        int(data["y_train"][i]),
                        float(weight[i, t]),
                    )
                )
    return pd.DataFrame.from_records(
        records,
        columns=INFLUENCERS.names,
    )


def gallery_targets(weight: np.ndarray, num: int) -> np.ndarray:
    """A deterministic sample of targets with non-zero datamodels, spread over target indices."""
    candidates = np.flatnonzero(np.abs(weight).sum(0) > 0)
    if len(candidates) == 0:
        return candidates
    picks = np.unique(np.linspace(0, len(candidates) - 1, min(num, len(candidates))).round().astype(int))
    return candidates[picks]
