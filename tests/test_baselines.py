"""Baselines beside the datamodels (issue 23, part 2): TRAK through the real traker on real trained
models, the input-similarity floor, the projection dimension, the comparison table, and the
config's refusals (traker missing, a singular projection) before any work. TRAK as a curve over its
model count (issue 35 item 4): nested points, one comparison row each, who is ahead at equal compute."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from dmflow.attribution import MISSING_TRAKER, trak_counts
from dmflow.attribution.baselines import input_similarity, resolve_proj_dim, trak_curve, trak_scores
from dmflow.config import ConfigError, validate_config
from dmflow.core.layout import Layout, baseline_point_names
from dmflow.core.seeds import chunk_seeds
from dmflow.core.tables import COMPARE
from dmflow.evaluation.compare import comparison_table, equal_compute
from dmflow.evaluation.metrics import score_attribution
from dmflow.plots.figures import comparison_figure
from dmflow.stages.baselines import baseline_scores
from dmflow.store.formats import Store
from dmflow.store.masks import draw_masks
from dmflow.training.settings import TrainSettings
from dmflow.training.train import train_chunk

SETTINGS = TrainSettings(arch="mlp", hidden=(16,), epochs=8, batch_size=30, lr=0.01, stack_size=200)


@pytest.fixture(scope="module")
def tiny_eval_store(tiny_data) -> Store:
    """A real eval store on the tiny digits: 100 half-data masks, each trained twice (one stack)."""
    n = tiny_data["X_train"].shape[0]
    masks = draw_masks(n, 0.5, 100, rng=np.random.default_rng(0))
    seeds = chunk_seeds(0, 0.5, "eval", chunk=0, rows=100, replicates=2)
    out = train_chunk(tiny_data, masks, seeds, settings=SETTINGS)
    return Store(None, {}, masks, out["margins"], out["status"], out["seeds"], out["acc_target"], out["acc_subset"])


def test_trak_and_input_similarity_beat_random_scores_on_real_models(tiny_data, tiny_eval_store):
    n, t = tiny_data["X_train"].shape[0], tiny_data["X_target"].shape[0]
    ids = np.arange(t)
    trak, info = trak_scores(tiny_data, settings=SETTINGS, models=3, proj_dim="auto", seed=0)
    assert trak.shape == (n, t) and trak.dtype == np.float32 and np.isfinite(trak).all()
    assert info["models"] == 3 and info["proj_dim"] == 16 and info["projector"] == "BasicProjector"
    similarity = input_similarity(
        tiny_data["X_train"], tiny_data["y_train"], x_target=tiny_data["X_target"], y_target=tiny_data["y_target"]
    )
    random = np.random.default_rng(1).normal(size=(n, t))
    lds = {
        name: score_attribution(s, tiny_eval_store, target_ids=ids)[1]["lds_mean"]["mean"]
        for name, s in (("trak", trak), ("similarity", similarity), ("random", random))
    }
    assert abs(lds["random"]) < 0.1
    one, _ = trak_scores(tiny_data, settings=SETTINGS, models=1, proj_dim=16)  # traker frees its one-model projector
    assert (
        np.isfinite(one).all() and score_attribution(one, tiny_eval_store, target_ids=ids)[1]["lds_mean"]["mean"] > 0.1
    )
    assert lds["trak"] > lds["random"] + 0.15 and lds["similarity"] > lds["random"] + 0.1, lds


def test_input_similarity_is_signed_cosine_similarity():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    scores = input_similarity(x, np.array([0, 1, 1]), x_target=np.array([[3.0, 0.0]]), y_target=np.array([1]))
    np.testing.assert_allclose(scores[:, 0], [-1.0, 0.0, np.sqrt(0.5)], atol=1e-6)


@pytest.mark.parametrize("n", [100, 1000, 1797, 5000, 50_000])
def test_auto_projection_dimension_stays_well_below_n(n):
    k = resolve_proj_dim("auto", n=n, num_params=10**6)
    assert k & (k - 1) == 0 and 8 <= k <= min(2048, n / 4) and k < n
    assert resolve_proj_dim("auto", n=1000, num_params=9610) == 128  # the default's MLP
    assert resolve_proj_dim("auto", n=50_000, num_params=500) == 500
    assert resolve_proj_dim(300, n=1000, num_params=9610) == 300


def test_missing_traker_is_refused_before_any_work_in_one_line(monkeypatch, tiny_data):
    monkeypatch.setitem(sys.modules, "trak", None)  # as if traker were not installed
    with pytest.raises(ConfigError) as err:
        validate_config({"baselines": {"enabled": True}})
    assert str(err.value) == MISSING_TRAKER and "pip install 'dmflow[baselines]'" in MISSING_TRAKER
    assert "\n" not in MISSING_TRAKER
    validate_config({"baselines": {"enabled": True, "methods": ["input_similarity"]}})  # no traker needed
    validate_config({"baselines": {"enabled": False}})
    with pytest.raises(RuntimeError, match="dmflow\\[baselines\\]"):
        trak_scores(tiny_data, settings=SETTINGS, models=1)


@pytest.mark.parametrize(
    "baselines,expected",
    [
        (
            {"enabled": True, "trak_proj_dim": 2048},
            "baselines.trak_proj_dim=2048 is not below the 1000 training examples: TRAK's kernel would be singular",
        ),
        ({"trak_proj_dim": "big"}, "baselines.trak_proj_dim='big' is not allowed; use 'auto' or an integer"),
        ({"trak_proj_dim": 4}, "baselines.trak_proj_dim=4 is not allowed"),
        ({"methods": ["influence"]}, "baselines.methods.0='influence' is not allowed; choose one of 'trak'"),
        ({"trak_models": 0}, "baselines.trak_models=0"),
        ({"trak_models": []}, "baselines.trak_models=[] is not allowed; use a model count of at least 1 or a strictly"),
        ({"trak_models": [0, 5]}, "baselines.trak_models.0=0 is not allowed; use a model count of at least 1"),
        ({"trak_models": [10, 5]}, "baselines.trak_models=[10, 5] is not allowed; use a model count of at least 1"),
        ({"trak_models": [1, 5, 5]}, "baselines.trak_models=[1, 5, 5] is not allowed; use a model count"),
        ({"trak_models": [1, 2.5]}, "baselines.trak_models.1=2.5 is not allowed"),
        ({"trak_models": "ten"}, "baselines.trak_models='ten' is not allowed"),
        ({"enable": True}, "unknown key baselines.enable"),
    ],
)
def test_a_bad_baselines_value_is_one_line_naming_the_key(baselines, expected):
    with pytest.raises(ConfigError) as err:
        validate_config({"baselines": baselines})
    assert expected in str(err.value) and "\n" not in str(err.value)


def _summary(lds: float, pearson: float = 0.5, ceiling: float = 0.8) -> dict:
    return {
        "lds_single": {"mean": lds - 0.05},
        "lds_mean": {"mean": lds},
        "fraction_of_ceiling": {"pearson_mean": pearson / ceiling},
    }


def test_a_comparison_without_ceilings_or_seconds_is_written_as_declared():
    """Every method below the noise ceiling's floor (fraction None) and no seconds recorded: NaN, not None,
    so the table has its declared float columns (a column of None failed the stage's check)."""
    none = {**_summary(0.2), "fraction_of_ceiling": {"pearson_mean": None}}
    baselines = {"trak": (none, {"models_trained": 5, "seconds": None})}
    table = comparison_table(none, fit_models=400, fit_seconds=None, baselines=baselines)
    assert list(COMPARE.check(table, where="compare.csv").columns) == COMPARE.names  # float NaN, not None
    assert table.fraction_of_ceiling.isna().all() and table.seconds.isna().all()


def test_the_comparison_counts_each_curve_point_its_share_of_the_training_seconds():
    curve = pd.DataFrame(
        {
            "num_models": [100, 200, 400],
            "lds_single": [0.1, 0.2, 0.3],
            "lds_mean": [0.15, 0.25, 0.35],
            "pearson_mean": [0.2, 0.3, 0.4],
            "ceiling_mean": [0.8, 0.8, 0.8],
        }
    )
    baselines = {
        "trak": (_summary(0.2), {"models_trained": 5, "seconds": 3.0}),
        "input_similarity": (_summary(0.1), {"models_trained": 0, "seconds": 0.01}),
    }
    table = comparison_table(_summary(0.35), fit_models=400, fit_seconds=80.0, curve=curve, baselines=baselines)
    assert list(table.columns) == COMPARE.names
    assert list(table.method) == [
        "datamodels (100 models)",
        "datamodels (200 models)",
        "datamodels",
        "trak",
        "input_similarity",
    ]
    assert list(table.models_trained) == [100, 200, 400, 5, 0]
    np.testing.assert_allclose(table.seconds, [20.0, 40.0, 80.0, 3.0, 0.01])
    np.testing.assert_allclose(table.fraction_of_ceiling, [0.25, 0.375, 0.625, 0.625, 0.625])
    unknown = comparison_table(_summary(0.35), fit_models=400, fit_seconds=None, curve=curve)
    assert unknown.seconds.isna().all() and len(unknown) == 3


def test_trak_is_a_curve_of_nested_points_over_its_model_count(tiny_data, tiny_eval_store):
    """One training of the largest count; each point is traker's scores over the first k checkpoints alone:
    the k = 3 point is TRAK on 3 models, the k = 1 point TRAK on the first of them."""
    curve, info = trak_curve(tiny_data, settings=SETTINGS, counts=[1, 3], proj_dim="auto", seed=0)
    assert len(curve) == 2 and all(c.shape == curve[0].shape and c.dtype == np.float32 for c in curve)
    assert info["models"] == 3 and info["counts"] == [1, 3] and info["proj_dim"] == 16
    assert 0 < info["point_seconds"][0] < info["point_seconds"][1] <= info["train_seconds"] + info["trak_seconds"]
    three, _ = trak_scores(tiny_data, settings=SETTINGS, models=3, proj_dim="auto", seed=0)
    np.testing.assert_allclose(curve[1], three, rtol=1e-4, atol=1e-6 * np.abs(three).max())
    one, _ = trak_scores(tiny_data, settings=SETTINGS, models=1, proj_dim="auto", seed=0)
    np.testing.assert_allclose(curve[0], one, rtol=1e-3, atol=1e-4 * np.abs(one).max())  # model 0 of a stack of 3
    assert not np.allclose(curve[0], curve[1])
    ids = np.arange(tiny_data["X_target"].shape[0])
    lds = [score_attribution(c, tiny_eval_store, target_ids=ids)[1]["lds_mean"]["mean"] for c in curve]
    assert lds[0] > 0.1 and lds[1] > 0.1, lds


def test_the_trak_job_writes_one_point_per_count_and_an_integer_is_one_point(tiny_data, tmp_path):
    from dmflow.core.io import atomic_save_npz

    data = tmp_path / "data.npz"
    atomic_save_npz(data, tiny_data)
    layout = Layout(tmp_path)
    n, t = tiny_data["X_train"].shape[0], tiny_data["X_target"].shape[0]
    for setting, counts in (([1, 2, 4], [1, 2, 4]), (2, [2])):
        files = {
            "scores": tmp_path / "trak.npy",
            "info": tmp_path / "trak.json",
            "curve": tmp_path / "trak.curve.npy",
        }
        record = baseline_scores(
            data,
            method="trak",
            settings=SETTINGS,
            baselines={"trak_models": setting, "trak_proj_dim": "auto"},
            seed=0,
            **files,
        )
        points = record["points"]
        assert [p["models_trained"] for p in points] == counts and record["models_trained"] == counts[-1]
        assert [p["name"] for p in points] == baseline_point_names("trak", counts)
        assert points[-1]["name"] == "trak" and all(p["name"] == f"trak-k{p['models_trained']}" for p in points[:-1])
        assert np.all(np.diff([p["seconds"] for p in points]) > 0)
        assert np.load(files["scores"]).shape == (n, t)
        assert np.load(files["curve"]).shape == (len(counts) - 1, n, t)
        assert json.loads(files["info"].read_text())["points"] == points
    assert layout.baseline_curve("trak").endswith("baselines/trak.curve.npy")
    record = baseline_scores(
        data, method="input_similarity", settings=SETTINGS, baselines={}, seed=0, **{**files, "curve": None}
    )
    assert [p["models_trained"] for p in record["points"]] == [0] and record["points"][0]["name"] == "input_similarity"


def test_trak_counts_take_an_integer_or_a_strictly_increasing_list():
    assert trak_counts(10) == [10] and trak_counts([1, 2, 5, 10]) == [1, 2, 5, 10] and trak_counts((3,)) == [3]
    for bad in ([], [0], [2, 1], [1, 1], 0, True, "5", [1.0]):
        with pytest.raises(ValueError, match="baselines.trak_models=.* is not allowed; use a model count"):
            trak_counts(bad)
    assert validate_config({"baselines": {"trak_models": [1, 2, 5, 10]}})["baselines"]["trak_models"] == [1, 2, 5, 10]
    assert validate_config({"baselines": {"trak_models": 3}})["baselines"]["trak_models"] == 3


def test_the_comparison_has_one_row_per_trak_point_and_says_who_is_ahead_at_equal_compute():
    curve = pd.DataFrame(
        {
            "num_models": [100, 200, 400],
            "lds_single": [0.1, 0.2, 0.3],
            "lds_mean": [0.15, 0.3, 0.45],
            "pearson_mean": [0.2, 0.3, 0.4],
            "ceiling_mean": [0.8, 0.8, 0.8],
        }
    )
    trak = [(_summary(lds), {"models_trained": k, "seconds": s}) for k, s, lds in ((1, 5.0, 0.2), (4, 20.0, 0.3))]
    table = comparison_table(_summary(0.45), fit_models=800, fit_seconds=80.0, curve=curve, baselines={"trak": trak})
    assert list(table.method) == [
        "datamodels (100 models)",
        "datamodels (200 models)",
        "datamodels (400 models)",
        "datamodels",
        "trak",
        "trak",
    ]
    assert list(table.models_trained[-2:]) == [1, 4] and list(table.seconds[-2:]) == [5.0, 20.0]
    verdict = equal_compute(table, "trak")
    # datamodels at 10, 20, 40, 80 s: 0.15, 0.3, 0.45, 0.45; TRAK at 5 s 0.2, at 20 s 0.3: they tie at 20 s
    assert "20 s: datamodels 0.300 vs trak 0.300" in verdict and "10 s to 20 s" in verdict
    ahead = comparison_table(
        _summary(0.45),
        fit_models=800,
        fit_seconds=80.0,
        curve=curve,
        baselines={"trak": [trak[0], (_summary(0.35), {"models_trained": 8, "seconds": 40.0})]},
    )
    verdict = equal_compute(ahead, "trak")
    assert "the curves cross at about 20 s: trak ahead below it, the datamodels above it" in verdict, verdict
    cheap = comparison_table(
        _summary(0.45),
        fit_models=800,
        fit_seconds=80.0,
        curve=curve,
        baselines={"trak": [(_summary(0.2), {"models_trained": 1, "seconds": 2.0})]},
    )
    assert "the curves do not overlap (trak at most 2 s, the datamodels from 10 s)" in equal_compute(cheap, "trak")
    lower = comparison_table(
        _summary(0.45),
        fit_models=800,
        fit_seconds=80.0,
        curve=curve,
        baselines={
            "trak": [
                (_summary(0.1), {"models_trained": 1, "seconds": 10.0}),
                (_summary(0.2), {"models_trained": 4, "seconds": 40.0}),
            ]
        },
    )
    assert "the datamodels are ahead of trak everywhere both were measured: the curves do not cross" in equal_compute(
        lower, "trak"
    )
    assert equal_compute(table[table.method != "trak"], "trak") is None
    figure = comparison_figure(table, ceiling=0.8)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "trak (over its model count)" in labels and "datamodels (learning curve)" in labels
    trak_line = [line for line in figure.axes[0].lines if line.get_label() == "trak (over its model count)"][0]
    assert list(trak_line.get_xdata()) == [5.0, 20.0] and trak_line.get_marker() == "s"
