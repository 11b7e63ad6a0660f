"""Hostile inputs (docs/guarantees.md's table): each is refused before any job with one line
that names the value and what is allowed, and nothing is written."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest

from dmflow.config import ConfigError, validate_config
from dmflow.core.errors import DataWarning
from dmflow.core.layout import Layout, alpha_dir

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


# --- config files: templates, alias bombs, values that would fail inside a job (issue 34) ----------------


YTE_CONFIG = """__use_yte__: true
results: ?"results/" + "from-a-template"
"""


def _alias_bomb(levels: int) -> str:
    """A few hundred bytes of YAML whose masks.alphas expands to 9^levels values (each level 9 aliases
    of the one before)."""
    items = ["&a0 [x,x,x,x,x,x,x,x,x]"] + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "masks:\n  alphas: [" + ", ".join(items) + "]\n"


def _one_line_config_error(proc) -> str:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "config error" in line]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_a_yte_template_config_is_refused_by_check_config_without_running_it(tmp_path):
    """Snakemake would evaluate a YTE template's code (``__use_yte__: true``); check-config reads plain data."""
    marker = tmp_path / "ran"
    path = tmp_path / "yte.yaml"
    path.write_text(YTE_CONFIG + f'seed: ?__import__("pathlib").Path({str(marker)!r}).touch() or 0\n')
    line = _one_line_config_error(dmflow_cli("check-config", path, check=False))
    assert "__use_yte__: dmflow configs are plain YAML, not YTE templates" in line and str(path) in line
    assert not marker.exists()


@pytest.mark.workflow
def test_a_yte_template_config_stops_the_workflow_with_check_configs_line(workflow):
    path = workflow.root / "yte.yaml"
    path.write_text(YTE_CONFIG)
    proc = workflow.run("--dry-run", "--configfile", str(path), check=False)
    assert "__use_yte__: dmflow configs are plain YAML" in _one_line_config_error(proc)
    assert "Job stats" not in proc.stdout


def test_a_yaml_alias_bomb_is_refused_in_one_short_line_at_once(tmp_path):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))  # 387 bytes, 387 million values expanded
    start = time.perf_counter()
    line = _one_line_config_error(dmflow_cli("check-config", path, check=False, timeout=60))
    assert time.perf_counter() - start < 30
    assert "more than 100000 values once its YAML aliases (*name) are expanded" in line and str(path) in line
    # below the limit (66,430 values), the schema's error echoes an excerpt of the value, not all of it
    path.write_text(_alias_bomb(5))
    line = _one_line_config_error(dmflow_cli("check-config", path, check=False, timeout=60))
    assert line.startswith("dmflow: config error: masks.alphas.4=[[[[['x', 'x',") and len(line) < 700
    assert "..." in line and "is not of type 'number'" in line


def test_an_alias_bomb_or_a_recursive_config_given_as_objects_is_refused():
    level = ["x"] * 9
    for _ in range(8):
        level = [level] * 9
    with pytest.raises(ConfigError, match="more than 100000 values once its YAML aliases"):
        validate_config({"masks": {"alphas": level}})
    loop: list = []
    loop.append(loop)
    with pytest.raises(ConfigError, match="the config refers to itself"):
        validate_config({"masks": {"alphas": loop}})


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a: &a [*a]\n", "the config refers to itself"),
        ("results: " + "[" * 5000 + "]" * 5000 + "\n", "nests lists or mappings too deeply to read"),
        ("results: " + "[" * 40 + "]" * 40 + "\n", "nests lists or mappings deeper than 32 levels"),
        ("results: !!python/tuple [1]\n", "could not determine a constructor for the tag"),
        ("results: [\n", "not valid YAML: expected the node content, but found '<stream end>' (line 2, column 1)"),
        ("- 1\n", "the config must be a mapping of keys, got list"),
        (b"\xff\xfe", "cannot read the config file (not UTF-8 text)"),
        ("masks: {alphas: 'x" + "y" * 100_000 + "'}\n", "masks.alphas='xyyyy"),
    ],
)
def test_a_malformed_config_file_is_one_short_line(tmp_path, text, expected):
    path = tmp_path / "cfg.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    line = _one_line_config_error(dmflow_cli("check-config", path, check=False))
    assert expected in line and len(line) < 700, line


@pytest.mark.workflow
def test_an_alias_bomb_stops_the_workflow_in_one_line(workflow):
    path = workflow.root / "bomb.yaml"
    path.write_text(_alias_bomb(9))
    proc = workflow.run("--dry-run", "--configfile", str(path), check=False)
    assert "more than 100000 values once its YAML aliases" in _one_line_config_error(proc)


@pytest.mark.parametrize(
    "config,expected",
    [
        (
            {"masks": {"fit_models": 100, "chunk_size": 100}, "fit": {"val_fraction": 0.99}},
            "fit.val_fraction=0.99 holds out 99 of the masks.fit_models=100 models for validation, leaving 1 to "
            "fit; at least 2 are needed",
        ),
        (
            {"masks": {"fit_models": 3, "chunk_size": 3}, "fit": {"val_fraction": 0.9}},
            "holds out 3 of the masks.fit_models=3 models for validation, leaving 0 to fit",
        ),
        (
            {"masks": {"fit_models": 16, "chunk_size": 16}, "evaluate": {"learning_curve": [0.125, 1.0]}},
            "evaluate.learning_curve: fraction 0.125 of masks.fit_models=16 is 2 models, leaving 1 to fit",
        ),
        ({"results": "-rf"}, "results='-rf' starts with '-', which the stage commands would read as an option"),
        ({"results": "./-rf/x"}, "results='./-rf/x' starts with '-'"),
        ({"results": "out/" + "x" * 256}, "is 256 bytes long; a file or folder name may have at most 255"),
        ({"results": "/" + "/".join(["x" * 200] * 20)}, "leave room for the files inside it"),
    ],
)
def test_a_config_that_would_fail_inside_a_job_is_refused_in_one_line(config, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_the_smallest_fit_the_config_check_accepts_runs(tmp_path):
    """Two fit rows (4 models, half held out) pass the check and fit; one would not."""
    from dmflow.lasso.settings import FitSettings
    from dmflow.stages.fit import fit_moments_block
    from dmflow.stages.moments import moments

    from helpers import planted_fit, write_store_folder

    small = {"masks": {"fit_models": 4, "chunk_size": 4}, "fit": {"val_fraction": 0.5}}
    validate_config({**small, "evaluate": {"learning_curve": [1.0]}})
    x, y, _ = planted_fit(n=40, m=4, t=5)
    (tmp_path / "store").mkdir()
    write_store_folder(tmp_path / "store", x, y)
    manifest = moments(tmp_path / "store", tmp_path / "moments", val_fraction=0.5, seed=0)
    block = fit_moments_block(tmp_path / "moments", 0, targets_per_job=5, settings=FitSettings(val_fraction=0.5))
    assert manifest["counts"] == {"fit": 2, "val": 2} and np.isfinite(block["weight"]).all()


def test_targets_per_job_above_the_targets_is_sized_like_the_rule(tmp_path):
    """The rule gives a fit job memory for min(targets_per_job, T) targets; the job asks for no more."""
    from dmflow.core.budgets import PROCESS_MB, fit_bytes
    from dmflow.lasso.settings import FitSettings
    from dmflow.stages.fit import fit_block
    from dmflow.stages.moments import moments

    from helpers import planted_fit, write_store_folder

    x, y, _ = planted_fit(n=40, m=200, t=5)
    (tmp_path / "store").mkdir()
    write_store_folder(tmp_path / "store", x, y)
    moments(tmp_path / "store", tmp_path / "moments", val_fraction=0.1, seed=0)
    targets_per_job = 10**6
    mem_mb = int(PROCESS_MB + fit_bytes(40, min(targets_per_job, 5)) / 2**20)  # rules/common.smk's fit_mem_mb
    result = fit_block(
        tmp_path / "moments",
        tmp_path / "block.npz",
        block=0,
        targets_per_job=targets_per_job,
        settings=FitSettings(val_fraction=0.1),
        mem_mb=mem_mb,
    )
    assert list(result["targets"]) == [0, 1, 2, 3, 4] and (tmp_path / "block.npz").is_file()


def test_diverged_models_that_leave_fewer_than_two_fit_rows_stop_the_moments_in_one_line(tmp_path):
    """The config check counts every fit model; at run time diverged ones may leave too few rows to fit."""
    from dmflow.stages.moments import moments
    from dmflow.store.schema import StoreError

    from helpers import planted_fit, write_store_folder

    x, y, _ = planted_fit(n=40, m=8, t=5)
    status = np.ones((8, 1), np.uint8)
    status[:3] = 0  # 3 usable rows; val_fraction 0.5 holds out 2
    y[3:] = np.nan
    (tmp_path / "store").mkdir()
    write_store_folder(tmp_path / "store", x, y, status)
    with pytest.raises(StoreError) as err:
        moments(tmp_path / "store", tmp_path / "moments", val_fraction=0.5, seed=0)
    assert "3 usable rows (5 diverged) less 2 validation rows leave 1 to fit; at least 2 are needed" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "moments").exists()
