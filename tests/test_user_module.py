"""A user's own LightningModule (``model.lightning``): trained stacked or one by one with the same result,
its datamodels scored like the built-in MLP's through real snakemake, and bad modules refused in one line."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from dmflow.config import ConfigError, validate_config
from dmflow.core.layout import Layout
from dmflow.data.augment import AugmentSettings
from dmflow.training.factory import load_lightning_class
from dmflow.training.settings import TrainSettings
from dmflow.training.train import train_stack
from dmflow.training.user_module import build_seeded_modules, user_stacking

from helpers import tiny_config

PACKAGE = "dmflow_user_models"
LDS_FLOOR = 0.1
"""Measured on the tiny config up to the evaluation (AMD EPYC, 2 cores): mean seed-mean LDS over the scored
targets 0.35 for the built-in MLP (23 targets), 0.23 for TinyMLP (27 targets); their models are alike (target
accuracy 0.465 / 0.457, margin spread across models 0.474 / 0.474): 10 eval masks make a target's LDS noisy.
Margins unrelated to the subsets (a wrong model, a wrong target order) score about 0."""

USER_MODELS = textwrap.dedent(
    '''
    """A user's LightningModules, as a user's package defines them."""
    import math

    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torch.nn import functional as F


    class TinyMLP(pl.LightningModule):
        """Flatten, one hidden ReLU layer, cross entropy, Adam: the built-in `mlp` written as a user would."""

        def __init__(self, input_shape, num_classes, hidden=16, lr=0.01, weight_decay=0.0):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return {"loss": loss}

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


    class WithAdamW(TinyMLP):
        """AdamW (its group holds an option its constructor does not take), in a list: stacked too."""

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y, label_smoothing=0.1)

        def configure_optimizers(self):
            return [torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)]


    class Dropout(TinyMLP):
        """Draws random numbers in training: trains one by one, each from its own seed."""

        def __init__(self, input_shape, num_classes, **kwargs):
            super().__init__(input_shape, num_classes, **kwargs)
            self.net.insert(3, nn.Dropout(0.3))


    class Normed(TinyMLP):
        """Has buffers (batch norm running statistics): trains one by one."""

        def __init__(self, input_shape, num_classes, **kwargs):
            super().__init__(input_shape, num_classes, **kwargs)
            self.net.insert(2, nn.BatchNorm1d(self.hparams.hidden))


    class Scheduled(TinyMLP):
        """An optimiser with a scheduler: trains one by one."""

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}


    class NoForward(pl.LightningModule):
        def training_step(self, batch, batch_idx):
            return None


    class ThreeLogits(TinyMLP):
        def forward(self, x):
            return super().forward(x)[:, :3]


    class Picky(TinyMLP):
        def __init__(self, input_shape, num_classes, depth):
            super().__init__(input_shape, num_classes)


    def not_a_class(input_shape, num_classes):
        return nn.Linear(1, 1)
    '''
)


@pytest.fixture(scope="module")
def user_package(tmp_path_factory):
    """``dmflow_user_models`` written as a package in its own folder, importable in this process
    (``sys.path``) and in snakemake's jobs (``PYTHONPATH``)."""
    root = tmp_path_factory.mktemp("userpkg")
    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text("")
    (root / PACKAGE / "models.py").write_text(USER_MODELS)
    sys.path.insert(0, str(root))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *([old] if old else [])])
    yield f"{PACKAGE}.models"
    sys.path.remove(str(root))
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old


def _images(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 1, 6, 6)) + 2 * y[:, None, None, None]).astype(np.float32)
    return x, y


@pytest.fixture()
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(
    "name,how", [("TinyMLP", "stacked"), ("WithAdamW", "stacked"), ("Dropout", "one by one"), ("Normed", "one by one")]
)
def test_each_model_trains_as_it_would_alone(user_package, float64, caplog, name, how):
    """K models of a stack (stacked with vmap, or one by one) give each model's own result: trained alone
    from its seed on its subset, same margins; models differ; the choice is logged in one line."""
    x, y = _images(60, 0)
    xt, yt = _images(10, 1)
    data = {"X_train": x, "y_train": y, "X_target": xt, "y_target": yt, "num_classes": 3}
    settings = TrainSettings(
        lightning=f"{user_package}:{name}",
        lightning_args={"hidden": 8, "lr": 0.05},
        epochs=3,
        batch_size=10,
        augment=AugmentSettings(flip=True, translate=1),
        test_time_flip=True,
        device="cpu",
    )
    rng = np.random.default_rng(0)
    subsets = np.stack([np.sort(rng.choice(60, 30, replace=False)) for _ in range(3)])
    seeds = np.array([5, 6, 7])
    with caplog.at_level(logging.INFO, logger="dmflow.training.user_module"):
        stacked = train_stack(data, subsets, seeds, settings=settings)
    chosen = [r.getMessage() for r in caplog.records if "3 models" in r.getMessage()]
    assert len(chosen) == 1 and f"3 models {how}" in chosen[0], chosen
    for i in range(3):
        alone = train_stack(data, subsets[i : i + 1], seeds[i : i + 1], settings=settings)
        np.testing.assert_allclose(stacked.margins[i], alone.margins[0], rtol=0, atol=1e-9)
        assert stacked.acc_subset[i] == alone.acc_subset[0] and stacked.acc_target[i] == alone.acc_target[0]
    assert stacked.margins.shape == (3, 10) and stacked.margins.dtype == np.float32
    assert np.isfinite(stacked.margins).all() and stacked.finite_loss.all()
    assert not np.allclose(stacked.margins[0], stacked.margins[1])
    assert stacked.acc_subset.mean() > 0.6  # it learned (the classes are shifted by their label)


def test_the_margin_is_the_one_of_design_from_the_modules_forward(user_package):
    """Untrained (0 epochs is not allowed: lr 0 instead), the recorded margin is logit[y] - max other logit
    of the module built from the model's seed."""
    x, y = _images(20, 2)
    xt, yt = _images(6, 3)
    data = {"X_train": x, "y_train": y, "X_target": xt, "y_target": yt, "num_classes": 3}
    settings = TrainSettings(
        lightning=f"{user_package}:TinyMLP", lightning_args={"lr": 1e-30}, epochs=1, batch_size=10, device="cpu"
    )
    result = train_stack(data, np.arange(20)[None, :10], np.array([11]), settings=settings)
    cls = load_lightning_class(settings.lightning)
    (module,) = build_seeded_modules(cls, [11], (1, 6, 6), num_classes=3, args={})
    with torch.no_grad():
        logits = module.eval()(torch.as_tensor(xt)).numpy()
    others = np.where(np.eye(3, dtype=bool)[yt], -np.inf, logits).max(1)
    np.testing.assert_allclose(result.margins[0], logits[np.arange(6), yt] - others, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stacking", ["auto", "loop"])
def test_a_diverging_module_is_marked_diverged(user_package, stacking):
    """A loss that becomes non-finite is recorded (``finite_loss``), stacked or one by one, so the chunk's
    status marks the model diverged."""
    x, y = _images(20, 4)
    data = {"X_train": x, "y_train": y, "X_target": x[:4], "y_target": y[:4], "num_classes": 3}
    settings = TrainSettings(
        lightning=f"{user_package}:TinyMLP",
        lightning_args={"lr": 1e30},
        stacking=stacking,
        epochs=3,
        batch_size=5,
        device="cpu",
    )
    result = train_stack(data, np.stack([np.arange(10), np.arange(10, 20)]), np.array([1, 2]), settings=settings)
    assert not result.finite_loss.any()


def test_stacking_is_chosen_in_one_place_and_says_why(user_package):
    cls = load_lightning_class(f"{user_package}:TinyMLP")
    probe = (torch.zeros(2, 4, 1, 6, 6), torch.zeros(2, 4, dtype=torch.long))
    modules = build_seeded_modules(cls, [1, 2], (1, 6, 6), num_classes=3, args={})
    assert user_stacking(modules, "auto", probe=probe)[0] == "vmap"
    assert user_stacking(modules, "loop", probe=probe) == ("loop", "model.stacking is 'loop'")
    assert user_stacking(modules[:1], "auto", probe=probe) == ("loop", "one model")
    for name, why in [
        ("Normed", "the module has buffers"),
        ("Scheduled", "configure_optimizers does not give one optimiser"),
        ("Dropout", "does not run under torch.func.vmap (RuntimeError: vmap: called random operation"),
    ]:
        modules = build_seeded_modules(
            load_lightning_class(f"{user_package}:{name}"), [1, 2], (1, 6, 6), num_classes=3, args={}
        )
        how, reason = user_stacking(modules, "auto", probe=probe)
        assert how == "loop" and why in reason, reason


def _digits_config(**model):
    return {"dataset": {"name": "digits", "num_train": 100, "num_targets": 10}, "model": model}


def test_a_good_module_passes_the_config_check(user_package):
    cfg = validate_config(_digits_config(lightning=f"{user_package}:TinyMLP", lightning_args={"hidden": 4}))
    assert cfg["model"]["lightning"] == f"{user_package}:TinyMLP" and cfg["model"]["lightning_args"] == {"hidden": 4}
    assert validate_config({})["model"]["lightning"] is None  # the default: dmflow's own models


@pytest.mark.parametrize(
    "model,expected",
    [
        ({"lightning": "no_such_pkg.mod:Net"}, "model.lightning='no_such_pkg.mod:Net': cannot import no_such_pkg.mod"),
        (
            {"lightning": "MODELS:Missing"},
            "model.lightning='MODELS:Missing': MODELS.Missing is nothing, not a subclass",
        ),
        (
            {"lightning": "MODELS:not_a_class"},
            "model.lightning='MODELS:not_a_class': MODELS.not_a_class is function, not a subclass of "
            "pytorch_lightning.LightningModule",
        ),
        (
            {"lightning": "MODELS:NoForward"},
            "model.lightning='MODELS:NoForward': NoForward does not define forward, configure_optimizers",
        ),
        (
            {"lightning": "MODELS:ThreeLogits"},
            "model.lightning: its forward maps a batch of shape [2, 1, 8, 8] to [2, 3], not [2, 10]",
        ),
        (
            {"lightning": "MODELS:Picky"},
            "model.lightning: Picky(input_shape=(1, 8, 8), num_classes=10, **model.lightning_args) raised TypeError",
        ),
        (
            {"lightning": "MODELS:TinyMLP", "lightning_args": {"hiden": 4}},
            "raised TypeError: TinyMLP.__init__() got an unexpected keyword argument 'hiden'",
        ),
        (
            {"lightning": "a module"},
            "model.lightning='a module' is not allowed; give a LightningModule as 'package.module:Class'",
        ),
        (
            {"lightning": "MODELS:TinyMLP", "stacking": "grouped"},
            "model.stacking='grouped' applies to dmflow's own models; with model.lightning choose 'auto'",
        ),
    ],
)
def test_a_bad_module_is_one_line_before_any_work(user_package, model, expected):
    model = {k: v.replace("MODELS", user_package) if isinstance(v, str) else v for k, v in model.items()}
    with pytest.raises(ConfigError) as err:
        validate_config(_digits_config(**model))
    message = str(err.value)
    assert "\n" not in message and expected.replace("MODELS", user_package) in message, message


def test_trak_baseline_is_refused_with_a_user_module(user_package):
    with pytest.raises(ConfigError, match="baselines.methods has 'trak', which does not train a model.lightning"):
        validate_config(
            {**_digits_config(lightning=f"{user_package}:TinyMLP"), "baselines": {"enabled": True, "methods": ["trak"]}}
        )


@pytest.mark.workflow
def test_a_user_module_trains_through_the_workflow_and_passes_the_mlps_lds_test(user_package, workflow):
    """The tiny config with the built-in MLP written as a user's LightningModule (same width, optimiser, lr
    and weight decay), through real snakemake up to the evaluation: its datamodels pass test_workflow's
    checks of the built-in MLP's, and score an LDS like the built-in MLP's on this config."""
    cfg = tiny_config(workflow.results)
    cfg["model"] = {
        "lightning": f"{user_package}:TinyMLP",
        "lightning_args": {"hidden": 16, "lr": 0.01, "weight_decay": 0.001},
    }
    workflow.write_config(cfg)
    layout = Layout(str(workflow.results))
    workflow.run(layout.eval_summary("0.5"))  # the analyses are the built-in's: left out, as they take minutes
    logs = sorted((workflow.results / "logs" / "train_chunk").rglob("*.log"))
    assert len(logs) == 3 and all(
        "stacked: its training_step runs under torch.func.vmap" in p.read_text() for p in logs
    )
    dm = np.load(layout.datamodels("0.5"))
    assert dm["weight"].shape == (100, 30) and np.isfinite(dm["weight"]).all()
    table = pd.read_parquet(layout.eval_table("0.5"))
    assert len(table) == 30 and np.isfinite(table[["mse_single", "mse_mean", "ceiling_mean"]].to_numpy()).all()
    nonzero = table[table.nnz > 0]
    assert len(nonzero) > 10 and np.isfinite(nonzero[["lds_single", "lds_mean", "pearson_mean"]].to_numpy()).all()
    summary = json.loads(open(layout.eval_summary("0.5")).read())
    assert summary["counts"]["diverged_models_excluded"] == 0
    assert nonzero.lds_mean.mean() > LDS_FLOOR, nonzero.lds_mean.mean()


@pytest.mark.workflow
def test_a_module_that_does_not_import_stops_snakemake_before_any_job(workflow):
    cfg = tiny_config(workflow.results)
    cfg["model"] = {"lightning": "no_such_user_pkg.models:Net"}
    workflow.write_config(cfg)
    proc = workflow.run(check=False)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "config error" in line]
    assert proc.returncode != 0 and len(lines) == 1 and "model.lightning='no_such_user_pkg.models:Net'" in lines[0]
    assert not workflow.results.exists()
