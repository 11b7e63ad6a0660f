"""The leakage audit finds planted duplicates: exact copies (of hard targets too), one-pixel
shifts and noisy copies of targets, planted into the digits training set of real models and
real datamodels; and its parts (similarity, evidence, the score) do what the docs say."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from dmflow.analysis.leakage import STANDOUT_Z, datamodel_evidence, leakage_table, robust_z, similarity_blocks, verdict
from dmflow.core.seeds import chunk_seeds
from dmflow.data.prepare import as_images, prepare_data
from dmflow.lasso.path import fit_targets
from dmflow.lasso.settings import FitSettings, split_validation_rows
from dmflow.stages.analysis import leakage_ranking
from dmflow.store.masks import chunk_masks
from dmflow.training.settings import TrainSettings
from dmflow.training.train import train_chunk


def _similarity(target: np.ndarray, train: np.ndarray, images: bool) -> np.ndarray:
    return np.concatenate([s for _, s in similarity_blocks(target, train, images=images)])


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` [H, W] moved by (dy, dx) pixels, the vacated pixels 0 (the background of digits)."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


# --- the parts, on small arrays ---------------------------------------------------------------


def test_exact_and_shifted_copies_have_similarity_one_and_noisy_copies_nearly():
    x = load_digits().images  # raw pixels 0..16, [1797, 8, 8]
    target = x[:3]
    rng = np.random.default_rng(0)
    train = np.concatenate(
        [
            x[3:200],
            target[:1],
            _shift(target[1], 1, -1)[None],
            np.clip(target[2] + rng.normal(0, 1, (8, 8)), 0, 16)[None],
        ]
    )
    sim = _similarity(as_images(target), as_images(train), images=True)
    copies = sim[[0, 1, 2], [197, 198, 199]]
    assert copies[0] == pytest.approx(1, abs=1e-5) and copies[1] == pytest.approx(1, abs=1e-5)
    assert copies[2] > 0.97 and (copies[2] > sim[2, :197]).all()  # the noisy copy is the nearest
    assert (sim[:, :197] < 0.999).all()  # no natural digit reaches a copy
    plain = _similarity(target.reshape(3, -1), train.reshape(len(train), -1), images=False)
    assert plain[1, 198] < 0.9  # without translations a one-pixel shift is far


def test_evidence_is_relative_to_the_targets_own_weights():
    w = np.zeros((6, 3))
    w[:, 0] = [2.0, 1.0, 0.5, 0.0, -0.5, 0.0]  # top helper 0 stands out by half
    w[:, 1] = w[:, 0] / 50  # a hard target: the same datamodel, 50 times smaller
    w[:, 2] = [-1.0, 0.0, 0.0, -0.2, 0.0, 0.0]  # no helper at all
    target = np.array([0, 0, 0, 1, 2])
    train = np.array([0, 1, 4, 0, 0])
    ev = datamodel_evidence(w, target, train)
    np.testing.assert_allclose(ev["relative_weight"], [1, 0.5, 0, 1, 0])
    np.testing.assert_allclose(ev["standout"], [0.5, 0, 0, 0.5, 0])
    np.testing.assert_allclose(ev["evidence"], [0.75, 0.25, 0, 0.75, 0])
    np.testing.assert_allclose(ev["share"][:2], [0.5, 0.25])


def test_a_copy_with_small_weights_outranks_natural_pairs_with_large_ones():
    """The issue's case: a hard target's copy carries a moderate weight; neighbours of easy targets carry big ones."""
    x = load_digits().images[:80]
    train, target = x[:70], np.concatenate([x[70:79], x[:1]])  # target 9 is training example 0
    w = np.zeros((70, 10))
    w[np.arange(9), np.arange(9)] = 5.0  # easy targets: one big, lonely weight each (not copies)
    w[0, 9], w[1, 9] = 0.2, 0.1  # the hard target: its copy on top, with small weights
    data = {"train_ids": np.arange(70), "y_train": np.zeros(70, int), "y_target": np.zeros(10, int)}
    table = leakage_table(w, data, np.arange(10), x_train=as_images(train), x_target=as_images(target), images=True)
    first = table.iloc[0]
    assert (first.target, first.train_index, first.similarity_rank, first.weight_rank) == (9, 0, 1, 1)
    assert first.similarity == pytest.approx(1, abs=1e-5) and first.distance < 1e-4
    assert first.evidence == pytest.approx(0.75) and first.score == pytest.approx(0.875, abs=1e-3)
    scaled = leakage_table(
        w * 7, data, np.arange(10), x_train=as_images(train), x_target=as_images(target), images=True
    )
    pd.testing.assert_frame_equal(scaled.drop(columns="weight"), table.drop(columns="weight"))  # scale-free
    assert list(table.columns[:6]) == ["rank", "target", "train_index", "score", "similarity", "similarity_rank"]


def test_robust_z_is_in_robust_standard_deviations_above_the_median_and_ignores_a_few_outliers():
    rng = np.random.default_rng(0)
    natural = rng.normal(0.1, 0.02, 1000)
    z = robust_z(np.concatenate([natural, [0.1 + 10 * 0.02, 0.9, 0.95]]))
    assert np.median(z[:1000]) == pytest.approx(0, abs=0.05)
    assert np.percentile(z[:1000], 84) == pytest.approx(1, abs=0.1)  # one sd of normal data
    assert z[1000] == pytest.approx(10, rel=0.1) and (z[1001:] > 30).all()
    assert (z[:1000] < STANDOUT_Z).all()
    assert np.isfinite(robust_z(np.full(5, 0.3))).all() and len(robust_z(np.array([]))) == 0


def test_a_copy_stands_out_from_natural_neighbours_and_the_verdict_says_which_or_none():
    """Digits without copies: the top pairs are ordinary neighbours and the verdict says so; with one
    exact copy of a target in the training set, that pair stands out and is named."""
    x = load_digits().images
    train, target = x[:400], x[400:600]
    data = {"train_ids": np.arange(1000, 1401), "y_train": np.zeros(401, int), "y_target": np.zeros(200, int)}
    w = np.zeros((400, 200))
    natural = leakage_table(w, data, np.arange(200), x_train=as_images(train), x_target=as_images(target), images=True)
    assert not natural.stands_out.any() and natural.robust_z.max() < STANDOUT_Z
    assert verdict(natural).startswith("No leakage candidate stands out from the data's natural similarity")
    assert f"{natural.score.iloc[0]:.3f}" in verdict(natural)
    copied = np.concatenate([train, target[7:8]])  # training example 400 is target 7
    table = leakage_table(
        np.zeros((401, 200)), data, np.arange(200), x_train=as_images(copied), x_target=as_images(target), images=True
    )
    assert table.stands_out.sum() == 1 and (table.iloc[0].target, table.iloc[0].train_index) == (7, 400)
    assert table.iloc[0].robust_z >= STANDOUT_Z
    assert verdict(table).startswith("1 of 200 targets have a leakage candidate that stands out")
    assert "7 -> 1400 (z " in verdict(table)


# --- planted copies, real models, real datamodels -----------------------------------------------

NUM_TRAIN, NUM_TARGETS, MODELS, CHUNK = 250, 150, 2000, 500
SETTINGS = TrainSettings(
    arch="mlp", hidden=(32,), epochs=10, batch_size=32, lr=0.01, weight_decay=1e-3, stack_size=500, device="cpu"
)


@dataclass
class Run:
    data: dict[str, np.ndarray]
    weight: np.ndarray
    margins: np.ndarray
    table: pd.DataFrame


def _datamodels(x_train, y_train, x_test, y_test, path: Path) -> Run:
    """prepare_data on an npz of raw digits, MODELS real trainings at alpha 0.5, the lasso, the leakage table."""
    np.savez(path, X_train=x_train, y_train=y_train, X_test=x_test, y_test=y_test)
    data = prepare_data({"name": "npz", "path": str(path), "num_targets": None, "standardize": True}, 0)
    n = len(data["y_train"])
    chunks = range(MODELS // CHUNK)
    masks = np.concatenate([chunk_masks(n, 0.5, "fit", chunk=c, chunk_size=CHUNK, seed=0) for c in chunks])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workflow's training jobs (train.threads: 1); small stacks gain nothing from 2
    try:
        margins = np.concatenate(
            [
                train_chunk(
                    data,
                    masks[c * CHUNK : (c + 1) * CHUNK],
                    chunk_seeds(0, 0.5, "fit", chunk=c, rows=CHUNK, replicates=1),
                    settings=SETTINGS,
                )["margins"][:, 0]
                for c in chunks
            ]
        )
    finally:
        torch.set_num_threads(threads)
    fit_rows, val_rows = split_validation_rows(np.arange(MODELS), 0.1, seed=0, alpha=0.5)
    weight = fit_targets(masks, margins, fit_rows=fit_rows, val_rows=val_rows, settings=FitSettings(device="cpu"))[
        "weight"
    ]
    table = leakage_ranking(weight, data, data["target_ids"], image_shape=None)
    return Run(data, weight, margins, table)


@dataclass
class Planted:
    natural: Run  # no copies
    run: Run  # with the copies
    kind: np.ndarray  # per planted copy: exact / shift / noise
    target: np.ndarray  # the target it copies
    train_index: np.ndarray  # its index in the training set
    hard: np.ndarray  # the hardest targets (lowest mean margin without copies), all copied exactly


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Planted:
    """Digits: 250 training examples, 150 targets; then 12 exact copies of targets (the 6 with the lowest
    mean margin and 6 others), 5 one-pixel shifts and 5 noisy copies (noise sd 1 of 16) planted."""
    folder = tmp_path_factory.mktemp("planted")
    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 8, 8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:NUM_TRAIN], order[NUM_TRAIN : NUM_TRAIN + NUM_TARGETS]
    natural = _datamodels(x[train], y[train], x[test], y[test], folder / "natural.npz")
    hard = np.argsort(natural.margins.mean(axis=0))[:6]
    others = rng.permutation(np.setdiff1d(np.arange(NUM_TARGETS), hard))
    exact, shifted, noisy = np.concatenate([hard, others[:6]]), others[6:11], others[11:16]
    copies = [x[test[t]] for t in exact]
    copies += [_shift(x[test[t]], dy, dx) for t, (dy, dx) in zip(shifted, [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1)])]
    copies += [np.clip(x[test[t]] + rng.normal(0, 1.0, (8, 8)), 0, 16) for t in noisy]
    targets = np.concatenate([exact, shifted, noisy])
    run = _datamodels(
        np.concatenate([x[train], np.array(copies)]),
        np.concatenate([y[train], y[test[targets]]]),
        x[test],
        y[test],
        folder / "planted.npz",
    )
    kind = np.array(["exact"] * 12 + ["shift"] * 5 + ["noise"] * 5)
    return Planted(natural, run, kind, targets, NUM_TRAIN + np.arange(len(targets)), hard)


def _pair_ranks(p: Planted) -> np.ndarray:
    """Rank of each planted (target, copy) pair in the leakage table; 0 when the target's row lists another example."""
    rows = p.run.table.set_index("target")
    return np.array(
        [rows.loc[t, "rank"] if rows.loc[t, "train_index"] == i else 0 for t, i in zip(p.target, p.train_index)]
    )


@pytest.mark.workflow
def test_exact_copies_rank_in_the_top_20_leakage_candidates(planted):
    ranks = _pair_ranks(planted)[planted.kind == "exact"]
    found = (ranks > 0) & (ranks <= 20)
    assert found.mean() >= 0.8, f"exact copies' ranks: {ranks.tolist()} (0: not listed)"
    assert found[: len(planted.hard)].all(), "a copy of a hard target (low mean margin) is missed"
    rows = planted.run.table.set_index("target").loc[planted.target[planted.kind == "exact"]]
    assert (rows.similarity > 0.9999).all() and (rows.similarity_rank == 1).all()
    assert rows.stands_out.all(), f"exact copies' robust z: {rows.robust_z.round(1).tolist()}"


@pytest.mark.workflow
def test_only_planted_copies_stand_out_and_nothing_without_them(planted):
    """The data's natural similarity: no natural pair stands out, with or without the copies beside it;
    every pair that stands out is a planted copy and the shifted and noisy copies rank right below."""
    assert not planted.natural.table.stands_out.any(), planted.natural.table.head(3)
    table = planted.run.table
    out = table[table.stands_out]
    assert set(zip(out.target, out.train_index)) <= set(zip(planted.target, planted.train_index))
    natural = table[~table.target.isin(planted.target)]
    near = table[table.target.isin(planted.target[planted.kind != "exact"])]
    assert near.robust_z.min() > natural.robust_z.max()


@pytest.mark.workflow
def test_near_copies_rank_above_natural_pairs_of_lower_similarity(planted):
    """Each one-pixel shift and noisy copy is its target's candidate and ranks above the natural pairs
    that are less similar; 5% of those may pass it when their datamodel singles them out (the
    evidence is worth a factor of up to 2, as much as 0.35 median nearest-neighbour distances)."""
    table = planted.run.table
    ranks = _pair_ranks(planted)
    natural = table[~table.target.isin(planted.target)]
    for kind, target, rank in zip(planted.kind, planted.target, ranks):
        if kind == "exact":
            continue
        assert rank > 0, f"the {kind} copy of target {target} is not its target's candidate"
        sim = table.similarity[table.target == target].item()
        lower = natural[natural.similarity < sim]
        above = lower[lower["rank"] < rank]
        assert len(above) <= 0.05 * len(lower), f"{kind} copy of target {target} (rank {rank}) below:\n{above}"


@pytest.mark.workflow
def test_without_planted_copies_the_top_candidates_span_the_classes(planted):
    top = planted.natural.table.head(20)
    counts = top.target_label.value_counts()
    assert len(counts) >= 3 and counts.max() <= 10, counts.to_dict()
    assert (top.similarity < 0.9999).all()  # nothing in it is a copy
