"""Configuration: the schema's defaults and checks, plus the checks across keys.

Every problem becomes one ``ConfigError`` line that names the key, the value and
what is allowed, raised before any job starts. The schema
(``schemas/config.schema.yaml``, read through ``dmflow.core.schema``) is the one
source of every default; ``docs/configuration.md`` is generated from it
(``dmflow config-docs``).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dmflow.attribution import MISSING_TRAKER, TRAK_MODELS_ALLOWED, trak_counts, traker_installed
from dmflow.core.schema import builtin_architectures, load_schema, validator
from dmflow.core.seeds import alpha_key
from dmflow.data.sources import DataError, DataWarning, dataset_info
from dmflow.store.masks import subset_size
from dmflow.training.factory import check_factory, load_factory


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
    if key == "baselines.trak_models" or key.startswith("baselines.trak_models."):
        return f"{key}={error.instance!r} is not allowed; {TRAK_MODELS_ALLOWED}"
    if key == "baselines.trak_proj_dim":
        return f"baselines.trak_proj_dim={error.instance!r} is not allowed; use 'auto' or an integer of at least 8"
    if error.validator == "enum":
        return f"{key}={error.instance!r} is not allowed; choose one of {', '.join(map(repr, error.validator_value))}"
    return f"{key}={error.instance!r}: {error.message}"


def _divisible(cfg: dict, key: str, chunk_key: str) -> None:
    value, chunk = cfg["masks"][key], cfg["masks"][chunk_key]
    if value % chunk:
        raise ConfigError(f"masks.{key}={value} must be a positive multiple of masks.{chunk_key}={chunk}")


def _check_results(results: str) -> str:
    """The results folder, normalised (``./x/`` -> ``x``); refuses what would scatter outputs."""
    if not results.strip():
        raise ConfigError(f"results={results!r} is empty; give a folder, e.g. results/mydata")
    for char in "{}\n\r\t\x00":
        if char in results:
            raise ConfigError(f"results={results!r} contains {char!r}, which Snakemake paths cannot hold")
    if ".." in Path(results).parts:
        raise ConfigError(f"results={results!r} must not contain '..'; give the results folder itself")
    if Path(results).resolve() == Path("/").resolve():
        raise ConfigError(f"results={results!r} is the filesystem root; give a folder of its own, e.g. results/mydata")
    return os.path.normpath(results)


def _check_alphas(alphas: list[float], n: int) -> None:
    keys: dict[int, float] = {}
    for alpha in alphas:
        if not 0 < subset_size(alpha, n) < n:
            raise ConfigError(
                f"masks.alphas: alpha={alpha} gives round(alpha*{n}) outside 1..{n - 1} training examples"
            )
        if alpha_key(alpha) in keys:
            raise ConfigError(
                f"masks.alphas: {keys[alpha_key(alpha)]} and {alpha} are closer than 1e-6 and would draw the same "
                "masks (seeds key alpha in millionths); keep one of them"
            )
        keys[alpha_key(alpha)] = alpha


def _check_devices(cfg: dict) -> None:
    """``cuda`` only where torch sees a GPU (``auto`` finds one wherever a job runs)."""
    asked = [key for key in ("train", "fit", "baselines") if cfg[key]["device"] == "cuda"]
    if not asked:
        return
    import torch  # heavy; only when a config asks for CUDA

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{asked[0]}.device='cuda' but torch finds no CUDA device here; use 'auto' (CUDA wherever a job sees "
            "a GPU, e.g. on a cluster's GPU nodes) or 'cpu'"
        )


def _check_model(model: dict, feature_shape: tuple[int, ...], num_classes: int) -> None:
    """Conv and custom models need images; a custom factory must build a model for this data."""
    arch = model["arch"]
    if arch in ("logreg", "mlp"):
        return
    image_shape = (1, *feature_shape) if len(feature_shape) == 2 else tuple(feature_shape)
    if len(image_shape) != 3:
        raise ConfigError(
            f"model.arch={arch!r} takes images [C, H, W] (or [H, W]), but this dataset's examples have shape "
            f"{list(feature_shape)}; use 'mlp' or 'logreg' for feature vectors"
        )
    if arch in builtin_architectures():
        return
    try:
        factory = load_factory(arch)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        check_factory(factory, image_shape, num_classes)
    except ValueError as exc:
        raise ConfigError(f"model.arch={arch!r} is not a model factory: {exc}") from None


def _check_baselines(baselines: dict, n: int) -> None:
    """TRAK's model counts increase, TRAK needs traker, and a projection dimension below n (else its kernel
    is singular)."""
    try:
        trak_counts(baselines["trak_models"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not baselines["enabled"] or "trak" not in baselines["methods"]:
        return
    if not traker_installed():
        raise ConfigError(MISSING_TRAKER)
    k = baselines["trak_proj_dim"]
    if k != "auto" and k >= n:
        raise ConfigError(
            f"baselines.trak_proj_dim={k} is not below the {n} training examples: TRAK's kernel would be singular "
            f"(rank <= {n}); use 'auto' or an integer from 8 to {n - 1}"
        )


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return the config with defaults filled in, or raise ConfigError (one line).

    Besides the schema, it checks the data itself (``dmflow.data.sources.dataset_info``),
    the alphas, the devices and a custom model factory, before any job. Problems that
    leave a usable config (targets of classes the training set lacks) are issued as
    ``DataWarning`` warnings.
    """
    cfg = copy.deepcopy(dict(config))
    errors = sorted(validator().iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(jsonschema.exceptions.best_match(errors)))
    cfg["results"] = _check_results(cfg["results"])
    _divisible(cfg, "fit_models", "chunk_size")
    _divisible(cfg, "eval_models", "eval_chunk_size")
    try:
        info = dataset_info(cfg["dataset"], cfg["seed"])
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    for note in info.warnings:
        warnings.warn(note, DataWarning, stacklevel=2)
    _check_alphas(cfg["masks"]["alphas"], info.num_train)
    _check_devices(cfg)
    _check_baselines(cfg["baselines"], info.num_train)
    _check_model(cfg["model"], info.feature_shape, info.num_classes)
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
