"""Baselines beside the datamodels (issue 23, part 2): TRAK through the real traker on real trained
models, the input-similarity floor, the projection dimension, the comparison table, and the
config's refusals (traker missing, a singular projection) before any work."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from dmflow.attribution import MISSING_TRAKER
from dmflow.attribution.baselines import input_similarity, resolve_proj_dim, trak_scores
from dmflow.config import ConfigError, validate_config
from dmflow.core.seeds import chunk_seeds
from dmflow.evaluation.compare import COLUMNS, comparison_table
from dmflow.evaluation.metrics import score_attribution
from dmflow.store.masks import draw_masks
from dmflow.store.schema import Store
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
    assert list(table.columns) == list(COLUMNS)
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
