"""Influencers, leakage, embeddings and the notebook entry: right targets, order and signs."""

import numpy as np
import pytest
from sklearn.datasets import make_classification

from dmflow.analysis.embeddings import component_ends, embed, normalised_embeddings
from dmflow.analysis.influence import gallery_targets, influencer_table, top_influencers
from dmflow.analysis.leakage import datamodel_evidence
from dmflow.core.seeds import chunk_seeds
from dmflow.data.prepare import as_images, prepare_data
from dmflow.lasso.path import fit_targets
from dmflow.lasso.settings import FitSettings, split_validation_rows
from dmflow.plots.galleries import as_image, pictures, value_range
from dmflow.stages.analysis import leakage_ranking
from dmflow.store.masks import chunk_masks
from dmflow.training.settings import TrainSettings
from dmflow.training.train import train_chunk


def _data(n=6, t=3):
    rng = np.random.default_rng(0)
    return {
        "X_train": rng.normal(size=(n, 4)),
        "X_target": rng.normal(size=(t, 4)),
        "y_train": np.arange(n) % 2,
        "y_target": np.arange(t) % 2,
        "train_ids": np.arange(100, 100 + n),
    }


def test_top_influencers_are_ordered_and_signed():
    w = np.array([[0.5, 0.0], [-0.2, 0.0], [0.9, 0.0], [0.0, 0.0], [-0.7, 0.1], [0.1, 0.0]], dtype=np.float32)
    helpers, harmers = top_influencers(w, 0, 2)
    assert list(helpers) == [2, 0] and list(harmers) == [4, 1]
    helpers, harmers = top_influencers(w, 1, 3)
    assert list(helpers) == [4] and len(harmers) == 0  # zero weights are neither


def test_influencer_table_rows_have_labels_ids_and_signs():
    w = np.array(
        [[0.5, -0.1, 0], [-0.2, 0.3, 0], [0.9, 0.2, 0], [0, 0, 0], [-0.7, 0, 0], [0.1, 0, 0]], dtype=np.float32
    )
    table = influencer_table(w, _data(), np.array([7, 8, 9]), k=2)
    first = table[table.target == 0]
    assert list(first.train_index) == [2, 0, 4, 1] and list(first.direction) == ["helps", "helps", "harms", "harms"]
    assert (first[first.direction == "helps"].weight > 0).all() and (first[first.direction == "harms"].weight < 0).all()
    assert list(first.train_id) == [102, 100, 104, 101] and (first.target_id == 7).all()
    assert 9 not in set(table.target_id)  # an all-zero datamodel has no influencers
    assert list(gallery_targets(w, 5)) == [0, 1]


def test_leakage_evidence_is_largest_for_a_dominated_datamodel():
    w = np.zeros((5, 3))
    w[:, 0] = [0.1, 0.1, 0.1, 0.1, 0.1]  # spread out
    w[:, 1] = [2.0, 0.1, 0.0, 0.0, -0.1]  # dominated by example 0
    w[:, 2] = [0.0, 0.0, 0.0, -1.0, 0.0]  # only harmed: no candidate
    ev = datamodel_evidence(w, np.arange(3), w.argmax(axis=0))
    assert ev["share"][1] == pytest.approx(2.0 / 2.2) and ev["standout"][1] == pytest.approx(0.95)
    assert ev["evidence"][2] == 0 and ev["evidence"][1] > ev["evidence"][0] == pytest.approx(0.5)


def test_planted_duplicates_come_out_on_top(tmp_path):
    """Exact copies of five (atypical) targets in the training set: the five top leakage pairs."""
    x, y = make_classification(
        n_samples=190, n_features=20, n_informative=10, n_classes=3, n_clusters_per_class=2, random_state=0
    )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:150], order[150:]
    planted = np.array([3, 11, 17, 25, 33])
    x = x.copy()
    x[test[planted]] += 4 * rng.normal(size=(5, x.shape[1]))
    np.savez(
        tmp_path / "leak.npz",
        X_train=np.concatenate([x[train], x[test[planted]]]),
        y_train=np.concatenate([y[train], y[test[planted]]]),
        X_test=x[test],
        y_test=y[test],
    )
    data = prepare_data(
        {"name": "npz", "path": str(tmp_path / "leak.npz"), "num_targets": None, "standardize": True}, 0
    )
    n = len(data["y_train"])
    settings = TrainSettings(
        arch="mlp", hidden=(32,), epochs=10, batch_size=32, lr=0.01, weight_decay=1e-3, stack_size=500, device="cpu"
    )
    masks = np.concatenate([chunk_masks(n, 0.5, "fit", chunk=c, chunk_size=500, seed=0) for c in range(3)])
    margins = np.concatenate(
        [
            train_chunk(
                data,
                masks[c * 500 : (c + 1) * 500],
                chunk_seeds(0, 0.5, "fit", chunk=c, rows=500, replicates=1),
                settings=settings,
            )["margins"][:, 0]
            for c in range(3)
        ]
    )
    fit_rows, val_rows = split_validation_rows(np.arange(1500), 0.1, seed=0, alpha=0.5)
    fitted = fit_targets(masks, margins, fit_rows=fit_rows, val_rows=val_rows, settings=FitSettings(device="cpu"))
    table = leakage_ranking(fitted["weight"], data, data["target_ids"], image_shape=None)
    top5 = table.head(5)
    assert set(top5.target) == set(planted)
    assert all(row.train_index == 150 + list(planted).index(row.target) for row in top5.itertuples())
    assert (top5.similarity_rank == 1).all()


def test_embeddings_shapes_and_component_ends():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(30, 40)) * (rng.random((30, 40)) < 0.3)
    w[:, 5] = 0
    z = normalised_embeddings(w)
    assert np.allclose(np.linalg.norm(z[np.arange(40) != 5], axis=1), 1) and (z[5] == 0).all()
    coords, loadings, ratio, labels = embed(w, components=3, clusters=4, seed=0)
    assert coords.shape == (40, 3) and loadings.shape == (3, 30) and len(set(labels)) == 4
    assert np.all(np.diff(ratio) <= 0)
    ends = component_ends(loadings, np.arange(30) % 3, np.arange(30) + 500, k=2)
    first = ends[(ends.component == 1) & (ends.end == "positive")]
    assert list(first.train_index) == list(np.argsort(-loadings[0])[:2])


@pytest.mark.parametrize(
    "shape,expected",
    [((8, 8), (1, 8, 8)), ((3, 4, 4), (3, 4, 4)), ((4, 4, 3), (3, 4, 4)), ((1, 5, 5), (1, 5, 5)), ((64,), None)],
)
def test_samples_are_shown_as_images_when_they_have_an_image_shape(shape, expected):
    x = np.arange(2 * np.prod(shape), dtype=float).reshape(2, *shape)
    images = as_images(x)
    assert (images is None) if expected is None else (images.shape == (2, *expected))
    assert as_images(np.arange(128.0).reshape(2, 64), image_shape=[8, 8]).shape == (2, 1, 8, 8)
    if expected is not None:
        assert as_image(images[0], 0, 2 * np.prod(shape)).shape == (expected[1:] if expected[0] == 1 else (4, 4, 3))


def test_galleries_draw_every_image_in_the_sources_value_range():
    """A faint digit stays faint: one fixed range for all pictures, not each image's own min and max."""
    digits = np.zeros((2, 1, 8, 8), np.float32)
    digits[0, 0, 2:6, 3] = 16.0  # a bold stroke
    digits[1, 0, 2:6, 3] = 4.0  # a faint one
    pics = pictures(digits, digits[:1])
    assert (pics.low, pics.high) == (0.0, 16.0)
    assert as_image(digits[1, 0][None], pics.low, pics.high).max() == pytest.approx(0.25)
    assert value_range(np.zeros((1, 3, 2, 2), np.uint8)) == (0.0, 255.0)  # images: the full byte range
    assert pictures(None, None) is None
