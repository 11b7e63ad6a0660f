"""Configuration: the schema's defaults and checks, plus the checks across keys.

Every problem becomes one ``ConfigError`` line that names the key, the value and
what is allowed, raised before any job starts. The schema
(``schemas/config.schema.yaml``, read through ``dmflow.core.schema``) is the one
source of every default; ``docs/configuration.md`` is generated from it
(``dmflow config-docs``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dmflow.core.schema import builtin_architectures, load_schema, validator
from dmflow.data.sources import DataError, dataset_sizes
from dmflow.store.masks import subset_size
from dmflow.training.factory import load_factory


class ConfigError(ValueError):
    """An invalid configuration value; the message is a single line."""


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key {where}{unknown[0]}; allowed: {allowed}"
    if key == "model.arch":
        choices = ", ".join(map(repr, builtin_architectures()))
        return f"model.arch={error.instance!r} is not allowed; choose one of {choices} or a custom model as 'package.module:factory'"
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
    errors = sorted(validator().iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
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
            raise ConfigError(
                f"masks.alphas: alpha={alpha} gives round(alpha*{n}) outside 1..{n - 1} training examples"
            )
    arch = cfg["model"]["arch"]
    if arch not in builtin_architectures():
        try:
            load_factory(arch)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg["fit"]["cvxpy_solver"] and cfg["fit"]["solver"] == "cvxpy":
        import cvxpy  # heavy; only when the cvxpy solver is asked for

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


def _cell(value: Any) -> str:
    text = "null" if value is None else yaml.safe_dump(value, default_flow_style=True, width=1000)
    return f"`{text.strip().removesuffix('...').strip()}`"


def _rows(properties: dict, prefix: str = "") -> list[str]:
    """Table rows of a section's keys; nested objects (``train.augment``) become dotted keys."""
    rows = []
    for name, spec in properties.items():
        if spec.get("type") == "object" and "properties" in spec:
            rows += _rows(spec["properties"], f"{prefix}{name}.")
        else:
            meaning = " ".join(spec.get("description", "").split())
            if not spec.get("x-result", True):
                meaning += (
                    ". Left out of the section's JSON param of the rules: changing it retrains and refits nothing"
                )
            rows.append(f"| `{prefix}{name}` | {_cell(spec.get('default'))} | {meaning} |")
    return rows


def config_markdown() -> str:
    """The text of docs/configuration.md: every key, its default and its meaning, from the schema."""
    schema = load_schema()
    header = ["| key | default | meaning |", "|---|---|---|"]
    top = {k: v for k, v in schema["properties"].items() if v.get("type") != "object"}
    lines = [
        f"# {schema['title']}",
        "",
        schema["description"].strip(),
        "",
        "## Top level",
        "",
        *header,
        *_rows(top),
        "",
    ]
    for name, spec in schema["properties"].items():
        if name in top:
            continue
        lines += [f"## `{name}`", ""]
        if spec.get("description"):
            lines += [spec["description"].strip(), ""]
        lines += [*header, *_rows(spec["properties"]), ""]
    return "\n".join(lines).rstrip() + "\n"
