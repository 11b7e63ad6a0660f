"""Hostile inputs (docs/guarantees.md's table): each is refused before any job with one line
that names the value and what is allowed, and nothing is written."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest

from dmflow.config import ConfigError, validate_config
from dmflow.core.layout import Layout, alpha_dir
from dmflow.data.sources import DataWarning

from helpers import dmflow_cli, tiny_config


def _npz(path, **arrays):
    base = dict(
        X_train=np.random.default_rng(0).normal(size=(10, 3)),
        y_train=np.arange(10) % 2,
        X_test=np.zeros((4, 3)),
        y_test=np.arange(4) % 2,
    )
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _lying_header(path):
    """An npz whose X_train header claims 10^12 elements while the archive holds 30 bytes of data."""
    _npz(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "X_train.npy":
                data = data.replace(b"(10, 3)", b"(1000000000000, 1)", 1)
            dst.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return path


def _bomb(path):
    """A small compressed npz whose X_train unpacks to 400 MB of zeros but whose y_train is one row short."""
    np.savez_compressed(
        path,
        X_train=np.zeros((10_000_000, 10), np.float32),
        y_train=np.arange(9_999_999) % 2,
        X_test=np.zeros((4, 10), np.float32),
        y_test=np.arange(4) % 2,
    )
    return path


def _bytes(content: bytes):
    def make(path):
        path.write_bytes(content)
        return path

    return make


def _npy_array(path):
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))
    return path


HOSTILE_FILES = {
    "empty file": (_bytes(b""), "is empty"),
    "a .npy, not an .npz": (_npy_array, "is a single .npy array, not an .npz archive"),
    "a text file": (_bytes(b"x,y\n1,2\n"), "is not an .npz (zip) archive"),
    "a header claiming 10^12 elements": (_lying_header, "the header of X_train claims shape [1000000000000, 1]"),
    "object arrays": (
        lambda p: _npz(p, X_train=np.array([object()] * 10, dtype=object)),
        "X_train holds pickled (object) data",
    ),
    "0-d X": (lambda p: _npz(p, X_train=np.float64(3.0)), "X_train must be [examples, features...], got shape []"),
    "zero test examples": (
        lambda p: _npz(p, X_test=np.zeros((0, 3)), y_test=np.zeros(0, np.int64)),
        "need at least 2 training and 1 test example, got 10 and 0",
    ),
    "zero features": (
        lambda p: _npz(p, X_train=np.zeros((10, 0)), X_test=np.zeros((4, 0))),
        "the examples have no features",
    ),
    "a label above 2^63": (
        lambda p: _npz(p, y_train=np.array([2**63 + 5] + [0, 1] * 4 + [1], np.uint64)),
        "y_train has labels above 2^63 - 1",
    ),
    "a label of 10^9": (
        lambda p: _npz(p, y_train=np.array([10**9] + [0, 1] * 4 + [1])),
        "labels must be 0..C-1: 3 distinct labels are present, the largest is 1000000000",
    ),
    "NaN in X_test": (
        lambda p: _npz(p, X_test=np.array([[0.0, np.nan, 0.0]] + [[0.0] * 3] * 3)),
        "X_test has 1 value(s) that are NaN, infinite or beyond float32's range (first in row 0)",
    ),
    "inf in X_train": (lambda p: _npz(p, X_train=np.full((10, 3), np.inf)), "X_train has 30 value(s) that are NaN"),
    "features beyond float32": (lambda p: _npz(p, X_train=np.full((10, 3), 1e39)), "beyond float32's range"),
    "one training class": (
        lambda p: _npz(p, y_train=np.zeros(10, np.int64)),
        "the training set has a single class (0); need at least two",
    ),
    "rows that do not match, compressed to a bomb": (_bomb, "X_train has 10000000 rows but y_train has 9999999"),
}


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_a_hostile_dataset_file_is_refused_in_one_line_before_any_job(tmp_path, name):
    make, expected = HOSTILE_FILES[name]
    path = make(tmp_path / "data.npz")
    with pytest.raises(ConfigError) as err:
        validate_config({"dataset": {"name": "npz", "path": str(path)}, "results": str(tmp_path / "out")})
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_a_compressed_bomb_is_refused_from_its_headers_without_unpacking_it(tmp_path):
    """The shapes come from the .npy headers: the 400 MB array is never decompressed."""
    import resource

    path = _bomb(tmp_path / "bomb.npz")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match="rows but y_train has"):
        validate_config({"dataset": {"name": "npz", "path": str(path)}})
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"the check grew the process by {grown_mb:.0f} MB"


def test_targets_of_a_class_the_training_set_lacks_get_a_warning_not_an_error(tmp_path):
    path = _npz(tmp_path / "d.npz", y_test=np.array([0, 1, 2, 1]), y_train=np.arange(10) % 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate_config({"dataset": {"name": "npz", "path": str(path)}})
    notes = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(notes) == 1 and "1 test example(s) have label(s) [2] that no training example has" in notes[0]
    proc = dmflow_cli("check-config", _config_file(tmp_path, {"dataset": {"name": "npz", "path": str(path)}}))
    assert "dmflow: warning: " in proc.stderr and "label(s) [2]" in proc.stderr


def _config_file(tmp_path, cfg):
    import yaml

    out = tmp_path / "cfg.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"results": "/"}, "results='/' is the filesystem root"),
        ({"results": "   "}, "results='   ' is empty"),
        ({"results": "out/{alpha}"}, "contains '{', which Snakemake paths cannot hold"),
        ({"masks": {"alphas": [0.5, 0.5000004]}}, "masks.alphas: 0.5 and 0.5000004 are closer than 1e-6"),
        (
            {"model": {"arch": "os:system"}},
            "model.arch='os:system' is not a model factory: calling it as "
            "factory(input_shape=(1, 8, 8), num_classes=10) raised TypeError",
        ),
        (
            {"model": {"arch": "test_hostile_inputs:wrong_output"}},
            "its model maps a batch of shape [2, 1, 8, 8] to [2, 3], not [2, 10]",
        ),
        ({"model": {"arch": "test_hostile_inputs:not_a_module"}}, "returned dict, not a torch.nn.Module"),
    ],
)
def test_a_hostile_config_value_is_refused_in_one_line(config, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert expected in str(err.value) and "\n" not in str(err.value)


def wrong_output(input_shape, num_classes):
    """A user's factory whose model gives 3 logits whatever the classes."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 3))


def not_a_module(input_shape, num_classes):
    return {"layers": 2}


def test_a_conv_model_on_feature_vectors_is_refused(tmp_path):
    path = _npz(tmp_path / "d.npz")
    with pytest.raises(
        ConfigError,
        match=r"model.arch='cnn' takes images \[C, H, W\] \(or \[H, W\]\), but this "
        r"dataset's examples have shape \[3\]",
    ):
        validate_config({"dataset": {"name": "npz", "path": str(path)}, "model": {"arch": "cnn"}})


@pytest.mark.parametrize("key", ["train", "fit"])
def test_cuda_without_a_gpu_is_refused_before_any_job(monkeypatch, key):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"{key}.device='cuda' but torch finds no CUDA device here; use 'auto'"):
        validate_config({key: {"device": "cuda"}})


def test_dot_results_is_normalised_and_tiny_alphas_get_plain_folder_names():
    cfg = validate_config({"results": "./"})
    assert cfg["results"] == "." and Layout(cfg["results"]).data() == "data.npz"
    assert Layout("./runs/a/").datamodels("0.5") == "runs/a/datamodels/0.5.npz"
    assert alpha_dir(6e-05) == "0.00006" and alpha_dir(0.5) == "0.5" and alpha_dir(0.125) == "0.125"


def test_features_near_1e30_are_standardised_not_zeroed(tmp_path):
    from dmflow.data.prepare import prepare_data

    rng = np.random.default_rng(0)
    path = _npz(tmp_path / "d.npz", X_train=rng.normal(size=(10, 3)) * 1e30, X_test=rng.normal(size=(4, 3)) * 1e30)
    out = prepare_data({"name": "npz", "path": str(path), "num_targets": None, "standardize": True}, seed=0)
    np.testing.assert_allclose(out["X_train"].std(0), 1, rtol=1e-5)
    assert np.isfinite(out["X_target"]).all() and np.abs(out["X_target"]).max() > 0.1


@pytest.mark.workflow
def test_a_results_path_with_spaces_and_shell_characters_runs_end_to_end(workflow):
    """Folders reach the commands as quoted params, never through an unquoted shell expression."""
    results = workflow.root / "my results" / "a;b $(touch pwned) 'q\" &x"
    cfg = tiny_config(results)
    cfg["counterfactual"]["enabled"] = False
    cfg["evaluate"]["learning_curve"] = []
    workflow.write_config(cfg)
    workflow.run()
    assert (results / "datamodels" / "0.5.npz").is_file() and (results / "summary.md").is_file()
    assert not list(workflow.root.rglob("pwned")) and not (workflow.root / "x").exists()
