"""Train-test leakage candidates: a target and a training example that look like copies of
each other (input space) and that the target's datamodel treats as such (weight space).

Per target t, with w = its datamodel weights [n], w_top the largest weight and w_2nd the
second largest, every candidate training example i (the target's ``NEAREST`` = 10 most
similar training examples, and its top helper, argmax w) gets

    similarity  s = input-space similarity of t and i (below); 1 for an exact copy
    distance    q = (1 - s) / D,  D = the median over all targets of 1 - s(t, nearest
                    training example): 0 for an exact copy, about 1 for an ordinary
                    nearest neighbour (D is floored at 1e-6)
    relative    r = max(w_i, 0) / w_top: 1 for the top helper, 0 for a non-helper
    standout    g = 1 - max(w_2nd, 0) / w_top for the top helper (how far it stands out
                    from every other weight), 0 for any other example
    evidence    e = (r + g) / 2: 0 = no help, 0.5 = as strong as the top helper,
                    1 = the top helper and every other weight <= 0
    score       = exp(-2 q) * (1 + e) / 2

(r, g and e are 0 when w_top <= 0.) A target's row is its candidate with the highest
score (ties: the more similar, then the lower index); rows are ranked by score, ties
by target.

Why this score. Every quantity is relative, so it compares across targets and across
datasets: a hard target (low mean margin) has smaller weights overall than an easy
one, so its weights enter only as ratios to its own top weight, and the similarity as a
distance in units of the dataset's typical nearest-neighbour distance. An exact copy
(q = 0) scores at least 0.5 and an ordinary nearest neighbour (q = 1) at most
exp(-2) = 0.14: input-space closeness decides whether a pair can be a copy at all, and
the datamodel's evidence, worth a factor of up to 2 (as much as being 0.35 D closer),
orders copies by how much the model relies on them and ranks the pairs it singles out
above equally close ones it ignores. A robust z-score of the top weight is not used:
a lasso datamodel's weights are mostly exactly 0, so their median absolute deviation
is 0. The share of the L1 mass, w_i / ||w||_1, is reported but not scored: it falls
with the number of examples the lasso kept (lambda is chosen per target), even when
one example stands out as clearly. A near copy that the model does not use (a 1-pixel
shift to which an MLP gives no weight) still scores exp(-2 q) / 2, above natural
pairs that are much less similar.

Does anything stand out? Every dataset has natural near neighbours (digits of one writer,
photos of one scene), so the top of the table always holds some close pairs: ranked pairs
are candidates, not findings. A target's candidate *stands out* when its score is far
above the distribution of every target's best score, the data's own natural similarity:

    robust z = (score - median) / (1.4826 * MAD),   stands out when z >= STANDOUT_Z = 6

with the median and the median absolute deviation (MAD; 1.4826 * MAD estimates the
standard deviation of normal data) over all targets' best scores (the scale is floored at
1e-6). Measured: the highest natural z was 4.6 on 150 copy-free digits targets, 4.8 on
1,000 Fashion-MNIST targets and, on the default digits run, 4.6 after two pairs at 8.2
and 6.5 that stand out (near copies: mean absolute pixel differences of 0.4 and 0.8 of
16, as close as the noisy copies of the tests). An exact copy scores at least 0.5 (z >=
6.7 on the default). Of the copies planted in ``tests/test_leakage.py`` (22 of 150
targets, which widen the MAD) the 12 exact ones stand out (z 6.7-11.2); the one-pixel
shifts (5.1-5.9) and noisy copies (4.2-5.0) rank right below them but do not reach 6.
When none stands out, the table's top pairs are ordinary near neighbours, and
``verdict`` says so.

Input-space similarity: cosine similarity of the features in the source's values (the
galleries' values, ``X_*_raw`` of ``data.npz``), standardised with training-set
statistics, per channel for images (which commutes with translations) and per feature
otherwise. For images it is the largest over translations by up to ``SHIFT`` = 1 pixel
in each direction, on the overlap of the two images: an exact copy and a copy shifted
by a pixel both reach 1.0, and a copy with small noise stays near it. (The model's own
features standardise every pixel of a greyscale image separately, which magnifies
noise in the nearly constant border pixels: a digit with noise of 1/16 of the pixel
range would sit at 0.4 there, below its natural neighbours.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NEAREST = 10
"""Each target's most similar training examples that are candidates (besides its top helper)."""
SHIFT = 1
"""Images are compared under translations by up to this many pixels."""
SHARPNESS = 2.0
"""score = exp(-SHARPNESS * q) * (1 + e) / 2."""
MIN_SCALE = 1e-6
"""The floor of D, the median nearest-neighbour distance."""
STANDOUT_Z = 6.0
"""A target's best candidate stands out when its score's robust z over every target's best score is at least this."""
MAD_TO_SD = 1.4826
"""1.4826 * MAD estimates the standard deviation of normal data."""
BLOCK_ENTRIES = 1 << 24
"""Targets are compared with the training set in blocks of about this many (target, example) pairs."""


def _standardise(train: np.ndarray, target: np.ndarray, *, images: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 copies standardised with the training set's statistics: per channel ([N, C, H, W]) or per feature."""
    train, target = train.astype(np.float32), target.astype(np.float32)
    if images:
        axes = (0, 2, 3)
    else:
        train, target = train.reshape(len(train), -1), target.reshape(len(target), -1)
        axes = (0,)
    mean = train.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std = train.std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std[~(std > 0)] = 1.0
    train -= mean
    train /= std
    target -= mean
    target /= std
    return train, target


def _region(dy: int, dx: int, h: int, w: int, *, moved: bool) -> tuple[slice, slice]:
    """Rows and columns of the overlap when a training image is moved by (dy, dx) against a target.

    Pixel (y + dy, x + dx) of the training image meets pixel (y, x) of the target: the
    region in training-image coordinates (``moved``) or in target coordinates.
    """
    if moved:
        return slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    return slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0))


def similarity_blocks(x_target: np.ndarray, x_train: np.ndarray, *, images: bool):
    """Yield (target rows, similarity [rows, n]) in blocks of targets: the module's input-space similarity.

    ``images``: the arrays are [N, C, H, W] images, compared under translations by up to
    ``SHIFT`` pixels on their overlap; else features of any shape (flattened). Values as
    the source gave them (standardised here). Memory: one float32 copy of each array and
    blocks of ``BLOCK_ENTRIES`` similarities; the overlaps are never copied (a target's
    overlap, zero outside it, meets the whole training image; the training images'
    norms over each overlap come from their squared pixels).
    """
    train, target = _standardise(x_train, x_target, images=images)
    n = len(train)
    flat = train.reshape(n, -1)
    rows = max(1, BLOCK_ENTRIES // max(1, n))
    if not images:
        unit = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        for start in range(0, len(target), rows):
            block = target[start : start + rows]
            block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
            yield np.arange(start, start + len(block)), np.clip(block @ unit.T, -1.0, 1.0)
        return
    h, w = train.shape[-2:]
    squares = np.square(train).sum(axis=1)  # [n, H, W]
    span = range(-SHIFT, SHIFT + 1)
    offsets = [(dy, dx) for dy in span for dx in span]
    train_norms = []
    for dy, dx in offsets:
        ys, xs = _region(dy, dx, h, w, moved=True)
        train_norms.append(np.sqrt(squares[:, ys, xs].sum(axis=(1, 2))))
    del squares
    for start in range(0, len(target), rows):
        block = target[start : start + rows]
        sim = None
        for (dy, dx), norms in zip(offsets, train_norms):
            ys, xs = _region(dy, dx, h, w, moved=True)
            yt, xt = _region(dy, dx, h, w, moved=False)
            placed = np.zeros_like(block)
            placed[..., ys, xs] = block[..., yt, xt]
            placed = placed.reshape(len(block), -1)
            denom = np.maximum(np.linalg.norm(placed, axis=1)[:, None] * norms[None, :], 1e-12)
            s = (placed @ flat.T) / denom
            sim = s if sim is None else np.maximum(sim, s)
        yield np.arange(start, start + len(block)), np.clip(sim, -1.0, 1.0)


def datamodel_evidence(weight: np.ndarray, target: np.ndarray, train: np.ndarray) -> dict[str, np.ndarray]:
    """The datamodel's side of the score for (target, training example) pairs, given as index arrays of one shape.

    Returns weight, relative_weight, standout, evidence and share, each of the pairs'
    shape (definitions in the module docstring).
    """
    weight = np.asarray(weight)
    top = weight.argmax(axis=0)
    w_top = weight[top, np.arange(weight.shape[1])].astype(np.float64)
    second = np.partition(weight, -2, axis=0)[-2] if weight.shape[0] > 1 else np.zeros(weight.shape[1])
    total = np.abs(weight).sum(axis=0, dtype=np.float64)
    w = weight[train, target].astype(np.float64)
    t_top = w_top[target]
    helps = (t_top > 0) & (w > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(helps, w / t_top, 0.0)
        standout = np.where(helps & (train == top[target]), 1.0 - np.maximum(second[target], 0.0) / t_top, 0.0)
        share = np.where(helps & (total[target] > 0), w / total[target], 0.0)
    return {
        "weight": w,
        "relative_weight": relative,
        "standout": standout,
        "evidence": (relative + standout) / 2,
        "share": share,
    }


def robust_z(scores: np.ndarray) -> np.ndarray:
    """Each score's distance above the median of all, in robust standard deviations.

    Parameters
    ----------
    scores : float [T]
        Every target's best leakage score.

    Returns
    -------
    float64 [T]
        ``(score - median) / (1.4826 * MAD)``, the scale floored at ``MIN_SCALE``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    median = np.median(scores)
    scale = max(MAD_TO_SD * float(np.median(np.abs(scores - median))), MIN_SCALE)
    return (scores - median) / scale


def verdict(table: pd.DataFrame, *, shown: int = 3) -> str:
    """One plain sentence: which candidates of a leakage table stand out (up to ``shown``), or that none does."""
    if not len(table):
        return "No leakage candidates: no targets."
    best = table.iloc[0]
    out = table[table.stands_out]
    if not len(out):
        return (
            f"No leakage candidate stands out from the data's natural similarity: the best score, {best.score:.3f}, "
            f"is {best.robust_z:.1f} robust standard deviations above the median target's best "
            f"(a candidate stands out at {STANDOUT_Z:g}); the top pairs are ordinary near neighbours."
        )
    pairs = ", ".join(f"{r.target_id} -> {r.train_id} (z {r.robust_z:.1f})" for r in out.head(shown).itertuples())
    more = f" and {len(out) - shown} more" if len(out) > shown else ""
    return (
        f"{len(out)} of {len(table)} targets have a leakage candidate that stands out from the data's natural "
        f"similarity (score at least {STANDOUT_Z:g} robust standard deviations above the median target's best): "
        f"{pairs}{more}. Look at them before trusting results on these targets."
    )


def leakage_table(
    weight: np.ndarray,
    data: dict[str, np.ndarray],
    target_ids: np.ndarray,
    *,
    x_train: np.ndarray,
    x_target: np.ndarray,
    images: bool,
) -> pd.DataFrame:
    """Every target's best leakage candidate, ranked by score, with every component of the score.

    Parameters
    ----------
    weight : float [n, T]
        The datamodels.
    data : dict
        The arrays of ``data.npz`` (labels and ids are read from it).
    target_ids : int [T]
    x_train, x_target : [n, ...], [T, ...]
        Features in the source's values; with ``images``, [N, C, H, W] images.
    images : bool
        Compare the features as images (translation-tolerant).

    Returns
    -------
    DataFrame
        One row per target, best first: rank, target, train_index, score, similarity,
        similarity_rank (1 = the most similar training example), distance, evidence,
        weight, weight_rank (1 = the top helper), relative_weight, standout, share,
        target_id, train_id, target_label, train_label, robust_z (of the score over
        every target's best) and stands_out (robust_z >= ``STANDOUT_Z``).
    """
    num_targets = weight.shape[1]
    top = weight.argmax(axis=0)
    cand = np.zeros((num_targets, NEAREST + 1), dtype=np.int64)
    cand_sim = np.zeros((num_targets, NEAREST + 1))
    cand_rank = np.zeros((num_targets, NEAREST + 1), dtype=np.int64)
    nearest_sim = np.zeros(num_targets)
    k = min(NEAREST, len(x_train))
    for rows, sim in similarity_blocks(x_target, x_train, images=images):
        near = (
            np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.tile(np.arange(k), (len(rows), 1))
        )
        near_sim = np.take_along_axis(sim, near, axis=1)
        order = np.lexsort((near, -near_sim), axis=1)
        near = np.take_along_axis(near, order, axis=1)
        if k < NEAREST:  # fewer training examples than NEAREST: repeat the last one
            near = np.concatenate([near, np.repeat(near[:, -1:], NEAREST - k, axis=1)], axis=1)
        c = np.concatenate([near, top[rows, None]], axis=1)
        c_sim = np.take_along_axis(sim, c, axis=1)
        cand[rows], cand_sim[rows] = c, c_sim
        for j in range(c.shape[1]):
            cand_rank[rows, j] = (sim > c_sim[:, j, None]).sum(axis=1) + 1
        nearest_sim[rows] = sim.max(axis=1)
    scale = max(float(np.median(1.0 - nearest_sim)) if num_targets else 1.0, MIN_SCALE)
    distance = np.maximum(1.0 - cand_sim, 0.0) / scale
    target_of = np.broadcast_to(np.arange(num_targets)[:, None], cand.shape)
    ev = datamodel_evidence(weight, target_of, cand)
    score = np.exp(-SHARPNESS * distance) * (1.0 + ev["evidence"]) / 2.0
    # best candidate per target: highest score, then most similar, then lowest index
    pick = np.lexsort((cand, -cand_sim, -score), axis=1)[:, 0]
    rows = np.arange(num_targets)
    train_index = cand[rows, pick]
    chosen = datamodel_evidence(weight, rows, train_index)
    table = pd.DataFrame(
        {
            "target": rows,
            "train_index": train_index,
            "score": score[rows, pick],
            "similarity": cand_sim[rows, pick],
            "similarity_rank": cand_rank[rows, pick],
            "distance": distance[rows, pick],
            "evidence": chosen["evidence"],
            "weight": chosen["weight"],
            "weight_rank": (weight > weight[train_index, rows]).sum(axis=0) + 1,
            "relative_weight": chosen["relative_weight"],
            "standout": chosen["standout"],
            "share": chosen["share"],
            "target_id": target_ids,
            "train_id": data["train_ids"][train_index],
            "target_label": data["y_target"],
            "train_label": data["y_train"][train_index],
        }
    )
    table["robust_z"] = robust_z(table.score.to_numpy())
    table["stands_out"] = table.robust_z >= STANDOUT_Z
    table = table.sort_values(["score", "target"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table
