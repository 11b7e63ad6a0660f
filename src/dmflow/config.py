"""Configuration: defaults and validation from a JSON schema, plus cross-key checks.

Every problem becomes one ``ConfigError`` line that names the key, the value and
what is allowed, raised before any job starts.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dmflow.data import DataError, dataset_sizes
from dmflow.masks import subset_size


class ConfigError(ValueError):
    """An invalid configuration value; the message is a single line."""


def load_schema() -> dict:
    """The config schema shipped with the package."""
    return yaml.safe_load(resources.files("dmflow").joinpath("schemas/config.schema.yaml").read_text())


def _with_defaults(validator_class: type) -> type:
    """A validator that fills in each property's ``default`` before checking it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key {where}{unknown[0]}; allowed: {allowed}"
    if key == "model.arch":
        return (f"model.arch={error.instance!r} is not allowed; choose one of 'mlp', 'logreg', 'cnn', 'resnet9'"
                " or a custom model as 'package.module:factory'")
    if error.validator == "enum":
        return f"{key}={error.instance!r} is not allowed; choose one of {', '.join(map(repr, error.validator_value))}"
    return f"{key}={error.instance!r}: {error.message}"


def _divisible(cfg: dict, key: str, chunk_key: str) -> None:
    value, chunk = cfg["masks"][key], cfg["masks"][chunk_key]
    if value % chunk:
        raise ConfigError(f"masks.{key}={value} must be a positive multiple of masks.{chunk_key}={chunk}")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return the config with defaults filled in, or raise ConfigError (one line)."""
    cfg = copy.deepcopy(dict(config))
    schema = load_schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(jsonschema.exceptions.best_match(errors)))
    if ".." in Path(cfg["results"]).parts:
        raise ConfigError(f"results={cfg['results']!r} must not contain '..'; give the results folder itself")
    _divisible(cfg, "fit_models", "chunk_size")
    _divisible(cfg, "eval_models", "eval_chunk_size")
    try:
        n, _ = dataset_sizes(cfg["dataset"], cfg["seed"])
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    for alpha in cfg["masks"]["alphas"]:
        if not 0 < subset_size(alpha, n) < n:
            raise ConfigError(f"masks.alphas: alpha={alpha} gives round(alpha*{n}) outside 1..{n - 1} training examples")
    arch = cfg["model"]["arch"]
    if ":" in arch:
        from dmflow.convnets import load_factory

        try:
            load_factory(arch)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg["fit"]["cvxpy_solver"] and cfg["fit"]["solver"] == "cvxpy":
        import cvxpy

        if cfg["fit"]["cvxpy_solver"] not in cvxpy.installed_solvers():
            raise ConfigError(
                f"fit.cvxpy_solver={cfg['fit']['cvxpy_solver']!r} is not installed; choose one of {', '.join(cvxpy.installed_solvers())}"
            )
    return cfg


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    return validate_config(raw)
