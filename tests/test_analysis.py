"""Influencers, leakage, embeddings and the notebook entry: right targets, order and signs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

from dmflow.analysis.embeddings import component_ends, embed, normalised_embeddings
from dmflow.analysis.influence import gallery_targets, influencer_table, top_influencers
from dmflow.analysis.leakage import STANDOUT_Z, datamodel_evidence, robust_z
from dmflow.core.io import atomic_save_json, atomic_save_npz, write_table
from dmflow.core.layout import Layout
from dmflow.core.seeds import chunk_seeds
from dmflow.data.prepare import as_images, prepare_data
from dmflow.lasso.path import fit_targets
from dmflow.lasso.settings import FitSettings, split_validation_rows
from dmflow.plots.galleries import as_image, pictures, value_range
from dmflow.stages.analysis import leakage_ranking, summary
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


# --- summary.md: honest headlines -----------------------------------------------------------------


def _finished_run(results, *, weight: np.ndarray, leak_scores: np.ndarray, slope: float) -> Layout:
    """The files summary.md reads for alpha 0.5, written as the stages write them."""
    layout = Layout(results)
    stat = {"mean": 0.8}
    atomic_save_json(
        Path(layout.eval_summary("0.5")),
        {
            "counts": {"eval_masks": 40, "replicates": 2, "targets": weight.shape[1], "diverged_models_excluded": 0},
            **{k: stat for k in ("lds_single", "lds_mean", "pearson_single", "pearson_mean", "replicate_corr")},
            **{k: {"mean": 0.9} for k in ("ceiling_single", "ceiling_mean")},
            "fraction_of_ceiling": {"pearson_single": 0.88, "pearson_mean": 0.89},
        },
    )
    atomic_save_npz(Path(layout.datamodels("0.5")), {"weight": weight, "bias": np.zeros(weight.shape[1])})
    atomic_save_json(
        Path(layout.cf_summary("0.5")),
        {
            "num_targets": 3,
            "replicates": 2,
            "correlation_predicted_actual": 0.9,
            "slope_actual_vs_predicted": slope,
            "flip_rate_top": {5: 0.5, 10: 0.75},
            "flip_rate_random": {5: 0.0, 10: 0.0},
        },
    )
    t = len(leak_scores)
    table = pd.DataFrame(
        {
            "rank": np.arange(1, t + 1),
            "target": np.arange(t),
            "train_index": np.arange(t),
            "score": np.sort(leak_scores)[::-1],
            "similarity": 0.95,
            "similarity_rank": 1,
            "distance": 0.1,
            "evidence": 0.5,
            "weight": 0.2,
            "weight_rank": 1,
            "relative_weight": 1.0,
            "standout": 0.5,
            "share": 0.1,
            "target_id": np.arange(500, 500 + t),
            "train_id": np.arange(t),
            "target_label": 0,
            "train_label": 0,
        }
    )
    table["robust_z"] = robust_z(table.score.to_numpy())
    table["stands_out"] = table.robust_z >= STANDOUT_Z
    write_table(table, Path(layout.leakage_table("0.5")))
    return layout


def test_summary_states_the_support_size_the_counterfactual_slope_and_whether_leakage_stands_out(tmp_path):
    rng = np.random.default_rng(0)
    weight = np.where(rng.random((100, 40)) < 0.6, rng.normal(size=(100, 40)), 0.0)
    nonzero = (weight != 0).sum(axis=0)
    natural = rng.normal(0.08, 0.03, 40).clip(0.01)
    layout = _finished_run(tmp_path / "a", weight=weight, leak_scores=natural, slope=1.6)
    text = summary(layout.results, ["0.5"], tmp_path / "a.md")
    assert (
        f"Datamodel support: {nonzero.mean():.0f} of n = 100 weights are non-zero per target on average "
        f"({nonzero.mean() / 100:.0%}; median {np.median(nonzero):.0f}); most weights are non-zero: "
        "these datamodels are not sparse." in text
    )
    assert "r = 0.900; the actual changes are 1.60x the predicted ones (least-squares slope)" in text
    assert "k=5: 0.500 vs 0.000, k=10: 0.750 vs 0.000" in text
    assert "Leakage: No leakage candidate stands out from the data's natural similarity" in text
    assert "The closest pairs (ordinary near neighbours)" in text and "Top leakage candidates" not in text
    assert "stands out)" not in text

    sparse = np.where(rng.random((100, 40)) < 0.05, 1.0, 0.0)
    leaked = np.concatenate([natural, [0.9]])
    layout = _finished_run(tmp_path / "b", weight=sparse, leak_scores=leaked, slope=1.0)
    text = summary(layout.results, ["0.5"], tmp_path / "b.md")
    assert "weights are non-zero per target on average" in text and "not sparse" not in text
    assert "Leakage: 1 of 41 targets have a leakage candidate that stands out" in text
    assert "- 500 -> 0: score 0.900 (z " in text and ", stands out), similarity" in text
    assert "Top leakage candidates (target id -> training id" in text


def test_summary_compares_each_benchmarked_rules_max_rss_with_its_mem_mb_and_shows_provenance(tmp_path):
    """summary.md's resources and provenance sections, from benchmark files and manifests as a run leaves them."""
    from dmflow.core import provenance
    from dmflow.core.io import atomic_save_json, atomic_save_npz
    from dmflow.core.layout import Layout
    from dmflow.stages.analysis import _benchmark_lines, _provenance_lines

    layout = Layout(tmp_path)
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"

    def write(path: str, text: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)

    for chunk, (s, rss) in {"00000": (12.5, 300.0), "00001": (14.0, 510.0)}.items():
        write(
            layout.benchmark("train_chunk", "0.5", "fit", chunk),
            head + f"{s}\t0:00:12\t{rss}\t900\t280\t290\t0\t1\t95\t12\n",
        )
    write(layout.benchmark("moments", "0.5"), head + "3.0\t0:00:03\t2048.0\t3000\t1\t1\t0\t1\t90\t3\n")
    write(layout.benchmark("evaluate", "0.5"), "")  # a job killed before Snakemake wrote it
    block = provenance.provenance()
    atomic_save_json(Path(layout.manifest("0.5", "fit")), {"train_seconds_per_model": 0.0123, "provenance": block})
    atomic_save_npz(
        Path(layout.datamodels("0.5")), {"weight": np.zeros((2, 2)), "provenance": provenance.as_array(block)}
    )

    lines = _benchmark_lines(layout, ["0.5"], {"train_chunk": 2000, "moments": 1024, "fit_block": 900})
    assert "| moments | 1 | 3.0 | 2048 | 1024 | 200% |" in lines  # over what it asked for: shown, not hidden
    assert "| train_chunk | 2 | 14.0 | 510 | 2000 | 26% |" in lines
    assert not [line for line in lines if line.startswith(("| evaluate", "| fit_block"))]  # nothing measured
    assert "Training seconds per model (store manifests' `train_seconds_per_model`): 0.5/fit 0.0123 s." in lines

    table = _provenance_lines(layout, ["0.5"])
    assert "| | store fit | store eval | moments | datamodels | evaluation |" in table
    assert f"| torch | {block['torch']} | - | - | {block['torch']} | - |" in table
    assert f"| cpu | {block['cpu']} | - | - | {block['cpu']} | - |" in table
