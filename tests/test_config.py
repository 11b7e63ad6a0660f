"""Config promises: defaults fill in, and each bad value is one line naming key and allowed values."""

import json

import numpy as np
import pytest

from dmflow.config import ConfigError, config_markdown, load_config, validate_config
from dmflow.core.schema import defaults, load_schema

from helpers import REPO


def test_empty_config_gets_the_documented_defaults():
    cfg = validate_config({})
    assert cfg["dataset"]["name"] == "digits" and cfg["masks"]["alphas"] == [0.5]
    assert cfg["fit"]["solver"] == "batched" and cfg["train"]["device"] == "auto"


def test_shipped_config_is_valid():
    cfg = load_config(REPO / "config.yaml")
    assert cfg["masks"]["fit_models"] % cfg["masks"]["chunk_size"] == 0


def _npz(tmp_path, **arrays):
    base = dict(X_train=np.zeros((10, 3)), y_train=np.arange(10) % 2, X_test=np.zeros((4, 3)), y_test=np.arange(4) % 2)
    base.update(arrays)
    base = {k: v for k, v in base.items() if v is not None}
    np.savez(tmp_path / "d.npz", **base)
    return str(tmp_path / "d.npz")


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"masks": {"alphas": [1.5]}}, "masks.alphas.0=1.5"),
        ({"masks": {"alphas": [0.0]}}, "masks.alphas.0=0.0"),
        ({"masks": {"alphas": [-0.2]}}, "masks.alphas.0=-0.2"),
        (
            {"masks": {"fit_models": 1500, "chunk_size": 1000}},
            "masks.fit_models=1500 must be a positive multiple of masks.chunk_size=1000",
        ),
        ({"masks": {"fit_models": 0}}, "masks.fit_models=0"),
        (
            {"masks": {"eval_models": 30, "eval_chunk_size": 20}},
            "masks.eval_models=30 must be a positive multiple of masks.eval_chunk_size=20",
        ),
        (
            {"dataset": {"name": "svhn"}},
            "dataset.name='svhn' is not allowed; choose one of 'digits', 'npz', 'cifar10', 'images', 'fashion-mnist'",
        ),
        ({"dataset": {"name": "mnist"}}, "dataset.path is required when dataset.name='mnist'"),
        ({"dataset": {"name": "kmnist", "path": "/nonexistent"}}, "dataset.path=/nonexistent: no kmnist IDX files"),
        (
            {"model": {"arch": "transformer"}},
            "model.arch='transformer' is not allowed; choose one of 'mlp', 'logreg', 'cnn', 'resnet9' or a custom model as 'package.module:factory'",
        ),
        (
            {"model": {"arch": "no_such_pkg.models:net"}},
            "model.arch='no_such_pkg.models:net': cannot import no_such_pkg.models",
        ),
        (
            {"model": {"arch": "json:no_such_factory"}},
            "model.arch='json:no_such_factory': json has no callable no_such_factory",
        ),
        ({"model": {"stacking": "vmap"}}, "model.stacking='vmap' is not allowed"),
        ({"train": {"augment": {"translate": -1}}}, "train.augment.translate=-1"),
        ({"train": {"precision": "fp8"}}, "train.precision='fp8' is not allowed"),
        ({"dataset": {"name": "cifar10"}}, "dataset.path is required when dataset.name='cifar10'"),
        (
            {"dataset": {"name": "cifar10", "path": "/nonexistent"}},
            "dataset.path=/nonexistent: no CIFAR-10 python batches",
        ),
        ({"dataset": {"name": "images", "path": "/nonexistent"}}, "dataset.path=/nonexistent: no such folder"),
        ({"dataset": {"name": "npz"}}, "dataset.path is required when dataset.name='npz'"),
        ({"dataset": {"name": "npz", "path": "/nonexistent/x.npz"}}, "dataset.path=/nonexistent/x.npz: no such file"),
        ({"train": {"epochs": "ten"}}, "train.epochs='ten'"),
        ({"trian": {}}, "unknown key trian"),
        ({"train": {"epoch": 3}}, "unknown key train.epoch"),
        ({"fit": {"solver": "glmnet"}}, "fit.solver='glmnet' is not allowed"),
        ({"fit": {"solver": "cvxpy", "cvxpy_solver": "GUROBI"}}, "fit.cvxpy_solver='GUROBI' is not installed"),
    ],
)
def test_bad_value_is_one_line_naming_the_key(config, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "arrays,expected",
    [
        ({"y_test": None}, "missing key(s) y_test"),
        ({"y_train": np.linspace(0, 1, 10)}, "y_train must be a 1-D integer array, got dtype float64"),
        ({"y_train": np.arange(9)}, "X_train has 10 rows but y_train has 9"),
        ({"X_test": np.zeros((4, 5))}, "feature shapes differ"),
        ({"X_train": np.array([["a"] * 3] * 10)}, "X_train must be real numbers"),
    ],
)
def test_bad_npz_dataset_is_refused_before_any_work(tmp_path, arrays, expected):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(ConfigError, match=None) as err:
        validate_config({"dataset": {"name": "npz", "path": path}})
    assert expected in str(err.value) and path in str(err.value)


def test_object_arrays_in_npz_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        X_train=np.array([object()] * 3, dtype=object),
        y_train=np.arange(3),
        X_test=np.zeros((1, 1)),
        y_test=np.arange(1),
    )
    with pytest.raises(ConfigError, match=r"X_train holds pickled \(object\) data"):
        validate_config({"dataset": {"name": "npz", "path": str(path)}})


def test_alpha_that_leaves_an_empty_subset_is_refused(tmp_path):
    path = _npz(tmp_path)
    with pytest.raises(ConfigError, match="alpha=0.01 gives round"):
        validate_config({"dataset": {"name": "npz", "path": path}, "masks": {"alphas": [0.01]}})


def test_docs_configuration_md_is_the_schema_rendered():
    """docs/configuration.md is generated from the schema (`dmflow config-docs`): the two cannot drift."""
    assert (REPO / "docs" / "configuration.md").read_text() == config_markdown(), (
        "regenerate it: dmflow config-docs > docs/configuration.md"
    )
    schema = load_schema()
    for name, section in schema["properties"].items():
        for key, spec in section.get("properties", {}).items():
            assert spec.get("description") or spec.get("properties"), f"{name}.{key} has no description"


def test_the_choices_listed_in_config_yaml_comments_are_the_schemas():
    """A comment such as `# adam | sgd` beside a key lists exactly the values the schema allows."""
    import re

    schema, section, checked = load_schema(), None, 0
    for line in (REPO / "config.yaml").read_text().splitlines():
        if re.match(r"^\w+:", line):
            section = line.split(":")[0]
        match = re.match(r"^\s+(\w+):[^#]*#\s*([\w\-]+(?:\s*\|\s*[\w\-]+)+)", line)
        if not match:
            continue
        key, listed = match.group(1), [c.strip() for c in match.group(2).split("|")]
        spec = schema["properties"][section]["properties"][key]
        allowed = spec.get("enum") or spec["anyOf"][0]["enum"]
        assert listed == [str(a) for a in allowed], (
            f"config.yaml lists {listed} for {section}.{key}; the schema allows {allowed}"
        )
        checked += 1
    assert checked >= 5


def test_every_value_in_config_yaml_is_valid_and_the_empty_config_is_the_schemas_defaults():
    assert validate_config({}) == defaults()
    shipped = load_config(REPO / "config.yaml")
    assert shipped["dataset"]["num_train"] == 1000 and set(shipped) == set(defaults())


def test_the_config_counts_the_fit_rows_as_the_moments_split_them():
    """The check of fit.val_fraction counts the rows as ``split_validation_rows`` divides them."""
    from dmflow.config import MIN_FIT_ROWS, _fit_rows
    from dmflow.lasso.settings import split_validation_rows
    from dmflow.stages import moments

    assert MIN_FIT_ROWS == moments.MIN_FIT_ROWS

    for models in (1, 2, 3, 4, 7, 16, 100, 1001):
        for val_fraction in (0.01, 0.1, 0.25, 0.5, 0.9, 0.99):
            fit, _ = split_validation_rows(np.arange(models), val_fraction, seed=0, alpha=0.5)
            assert _fit_rows(models, val_fraction) == len(fit), (models, val_fraction)


def test_check_config_prints_exactly_what_read_config_file_and_validate_config_give(tmp_path):
    """One reader for check-config and the Snakefile: JSON first, then YAML, as Snakemake reads --configfile."""
    import json

    from dmflow.config import read_config_file

    (tmp_path / "c.json").write_text(json.dumps({"seed": 5, "masks": {"alphas": [0.25]}}))
    (tmp_path / "c.yaml").write_text("seed: 5\nmasks:\n  alphas: [0.25]\n")
    for name in ("c.json", "c.yaml"):
        assert read_config_file(tmp_path / name) == {"seed": 5, "masks": {"alphas": [0.25]}}
        assert load_config(tmp_path / name)["masks"]["alphas"] == [0.25]


def test_rule_params_leave_out_what_changes_no_result_and_later_keys_at_their_default():
    """Snakemake reruns a job whose params change: threads never enter them, and a key added after
    results existed (``x-omit-default``) enters only once it leaves its default, so those results stand.
    The command fills every left-out key back in from the schema."""
    from dmflow.cli.rules import section
    from dmflow.core.schema import param_section

    cfg = validate_config({})
    assert "threads" in cfg["train"] and "threads" not in param_section("train", cfg["train"])
    model = param_section("model", cfg["model"])
    assert "lightning" not in model and "lightning_args" not in model and model["arch"] == cfg["model"]["arch"]
    mine = param_section("model", {**cfg["model"], "lightning": "pkg.mod:Net", "lightning_args": {"width": 8}})
    assert mine["lightning"] == "pkg.mod:Net" and mine["lightning_args"] == {"width": 8}
    parse = section("model").options["type"]
    assert parse(json.dumps(model)) == cfg["model"]
