"""Train-test leakage candidates from datamodels.

A target whose datamodel puts most of its weight on one training example behaves as
if that example were (nearly) the target itself. Per target, with w_top the largest
positive weight and ||w||_1 the total absolute weight:

    share = w_top / ||w||_1          (how much of the datamodel one example carries)
    score = w_top * share            (large when that example both moves the margin a
                                      lot and dominates; ranks the candidates)

Beside the score, the input-space cosine similarity of the pair and the rank of the
training example among all training examples by similarity to the target (1 = the
nearest neighbour) let a user check a candidate without looking at it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def leakage_scores(weight: np.ndarray) -> pd.DataFrame:
    """Per target: its top training example, the top weight, its share and the score."""
    top = weight.argmax(axis=0)
    w_top = weight[top, np.arange(weight.shape[1])]
    total = np.abs(weight).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, w_top / total, 0.0)
    share = np.where(w_top > 0, share, 0.0)
    return pd.DataFrame(
        {
            "target": np.arange(weight.shape[1]),
            "train_index": top,
            "weight": np.maximum(w_top, 0.0),
            "share": share,
            "score": np.maximum(w_top, 0.0) * share,
        }
    )


def cosine_similarity_to_train(x_target: np.ndarray, x_train: np.ndarray) -> np.ndarray:
    """[T, n] cosine similarity between flattened target and training features."""
    a = x_target.reshape(len(x_target), -1).astype(np.float64)
    b = x_train.reshape(len(x_train), -1).astype(np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def leakage_table(weight: np.ndarray, data: dict[str, np.ndarray], target_ids: np.ndarray) -> pd.DataFrame:
    """All targets' top pairs ranked by score, with labels and input-space similarity."""
    table = leakage_scores(weight)
    sim = cosine_similarity_to_train(data["X_target"], data["X_train"])
    rows = np.arange(len(table))
    pair_sim = sim[rows, table.train_index]
    table["similarity"] = pair_sim
    table["similarity_rank"] = (sim > pair_sim[:, None]).sum(axis=1) + 1
    table["target_id"] = target_ids
    table["train_id"] = data["train_ids"][table.train_index]
    table["target_label"] = data["y_target"]
    table["train_label"] = data["y_train"][table.train_index]
    table = table.sort_values(["score", "target"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table
