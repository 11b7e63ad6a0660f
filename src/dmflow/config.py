"""Configuration: the schema's defaults and checks, plus the checks across keys.

Every problem becomes one ``ConfigError`` line that names the key, the value and
what is allowed, raised before any job starts. The schema
(``schemas/config.schema.yaml``, read through ``dmflow.core.schema``) is the one
source of every default; ``docs/configuration.md`` is generated from it
(``dmflow config-docs``).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dmflow.attribution import MISSING_TRAKER, TRAK_MODELS_ALLOWED, trak_counts, traker_installed
from dmflow.core.errors import DataError, DataWarning
from dmflow.core.schema import builtin_architectures, load_schema, validator
from dmflow.core.seeds import alpha_key
from dmflow.data.sizing import dataset_info
from dmflow.store.masks import subset_size
from dmflow.training.factory import check_factory, check_lightning_class, load_factory, load_lightning_class

MESSAGE_CHARS = 600
"""The longest config error line; a longer one keeps its start (the key) and its end (what is allowed)."""
EXCERPT_CHARS = 200
"""The most characters of a value a config error echoes."""
MAX_CONFIG_VALUES = 100_000
"""The most values (mappings, lists and scalars) a config may hold, counted with its YAML aliases expanded:
an alias bomb of a few hundred bytes expands to hundreds of millions. A real config holds a few hundred."""
MAX_CONFIG_DEPTH = 32
"""The deepest nesting of mappings and lists a config may have (a real config's is 3)."""
MIN_FIT_ROWS = 2
"""The fewest fit rows (fit models less the validation rows) the moments can fit (one gives a zero Gram)."""
NAME_MAX = 255
"""The longest file or folder name (bytes) Linux and macOS filesystems take."""
PATH_MAX = 4096
"""The longest path Linux takes; the results folder leaves ``RESULTS_FILE_CHARS`` of it to its files."""
RESULTS_FILE_CHARS = 256
YTE_KEY = "__use_yte__"
_YTE_REFUSED = (
    f"{YTE_KEY}: dmflow configs are plain YAML, not YTE templates (Snakemake runs a template's code when it "
    "reads the file, before dmflow sees it); remove the key and write the values out"
)


def _cut(text: str, chars: int = EXCERPT_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 3] + "..."


def excerpt(value: Any, chars: int = EXCERPT_CHARS) -> str:
    """``repr(value)``, cut to ``chars`` characters with ``...`` where longer."""
    return _cut(repr(value), chars)


def _shorten(message: str) -> str:
    message = " ".join(str(message).splitlines())  # one line, whatever a value held
    if len(message) <= MESSAGE_CHARS:
        return message
    tail = MESSAGE_CHARS // 4
    return f"{message[: MESSAGE_CHARS - tail - 5]} ... {message[-tail:]}"


class ConfigError(ValueError):
    """An invalid configuration value; the message is a single line of at most ``MESSAGE_CHARS``."""

    def __init__(self, message: str) -> None:
        super().__init__(_shorten(message))


def _describe(error: jsonschema.ValidationError) -> str:
    key = _cut(".".join(str(p) for p in error.absolute_path) or "(top level)")
    value = excerpt(error.instance)
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = sorted(map(str, set(error.instance) - set(error.schema.get("properties", {}))))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key {where}{_cut(unknown[0])}; allowed: {allowed}"
    if key == "model.arch":
        choices = ", ".join(map(repr, builtin_architectures()))
        return (
            f"model.arch={value} is not allowed; choose one of {choices} or a custom model as 'package.module:factory'"
        )
    if key == "model.lightning":
        return f"model.lightning={value} is not allowed; give a LightningModule as 'package.module:Class' (null: dmflow's own models)"
    if key == "baselines.trak_models" or key.startswith("baselines.trak_models."):
        return f"{key}={value} is not allowed; {TRAK_MODELS_ALLOWED}"
    if key == "baselines.trak_proj_dim":
        return f"baselines.trak_proj_dim={value} is not allowed; use 'auto' or an integer of at least 8"
    if error.validator == "enum":
        return f"{key}={value} is not allowed; choose one of {', '.join(map(repr, error.validator_value))}"
    return f"{key}={value}: {error.message.replace(repr(error.instance), value)}"


def _check_size(config: Any) -> None:
    """Refuse a config that YAML aliases expand past ``MAX_CONFIG_VALUES`` values, nests deeper than
    ``MAX_CONFIG_DEPTH`` or refers to itself, before anything walks it. Aliases load as shared objects, so
    each is sized once (by identity) and counted at every place it appears."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(config, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        children = list(node.items()) if isinstance(node, dict) else node
        children = [c for pair in children for c in pair] if isinstance(node, dict) else children
        if done:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(node)] > MAX_CONFIG_VALUES:
                raise ConfigError(
                    f"the config holds more than {MAX_CONFIG_VALUES} values once its YAML aliases (*name) are "
                    "expanded (an alias bomb?); a dmflow config holds a few hundred: write the values out"
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in ancestors:
            raise ConfigError("the config refers to itself (a YAML alias inside its own anchor); write the values out")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"the config nests lists or mappings deeper than {MAX_CONFIG_DEPTH} levels")
        ancestors.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if isinstance(c, dict | list))


def _divisible(cfg: dict, key: str, chunk_key: str) -> None:
    value, chunk = cfg["masks"][key], cfg["masks"][chunk_key]
    if value % chunk:
        raise ConfigError(f"masks.{key}={value} must be a positive multiple of masks.{chunk_key}={chunk}")


def _check_results(results: str) -> str:
    """The results folder, normalised (``./x/`` -> ``x``); refuses what would scatter outputs, what the
    commands would read as an option, and names the filesystem cannot hold."""
    shown = excerpt(results)
    if not results.strip():
        raise ConfigError(f"results={shown} is empty; give a folder, e.g. results/mydata")
    for char in "{}\n\r\t\x00":
        if char in results:
            raise ConfigError(f"results={shown} contains {char!r}, which Snakemake paths cannot hold")
    if ".." in Path(results).parts:
        raise ConfigError(f"results={shown} must not contain '..'; give the results folder itself")
    if Path(results).resolve() == Path("/").resolve():
        raise ConfigError(f"results={shown} is the filesystem root; give a folder of its own, e.g. results/mydata")
    normal = os.path.normpath(results)
    if normal.startswith("-"):
        raise ConfigError(
            f"results={shown} starts with '-', which the stage commands would read as an option (also as "
            f"'./{normal}', which is normalised to it); give a name that does not start with '-', or an absolute path"
        )
    for part in Path(normal).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(
                f"results={shown}: the folder name {excerpt(part, 60)} is {len(os.fsencode(part))} bytes long; "
                f"a file or folder name may have at most {NAME_MAX}"
            )
    longest = PATH_MAX - RESULTS_FILE_CHARS
    if len(os.fsencode(os.path.abspath(normal))) > longest:
        raise ConfigError(
            f"results={shown} is {len(os.fsencode(os.path.abspath(normal)))} bytes long as an absolute path; at most "
            f"{longest} leave room for the files inside it (paths may have at most {PATH_MAX})"
        )
    return normal


def _fit_rows(models: int, val_fraction: float) -> int:
    """The rows left to fit when ``models`` usable rows lose their validation rows (as
    ``dmflow.lasso.settings.split_validation_rows`` splits them: round(val_fraction * models), at least one)."""
    return models - max(1, int(round(val_fraction * models)))


def _check_fit_rows(cfg: dict) -> None:
    """The moments of the fit rows need ``MIN_FIT_ROWS`` of them, in the fit and in each learning-curve refit."""
    models, val_fraction = cfg["masks"]["fit_models"], cfg["fit"]["val_fraction"]
    rows = _fit_rows(models, val_fraction)
    if rows < MIN_FIT_ROWS:
        raise ConfigError(
            f"fit.val_fraction={val_fraction} holds out {models - rows} of the masks.fit_models={models} models for "
            f"validation, leaving {rows} to fit; at least {MIN_FIT_ROWS} are needed: lower fit.val_fraction or "
            "raise masks.fit_models"
        )
    for fraction in cfg["evaluate"]["learning_curve"]:
        first = int(round(fraction * models))
        if fraction != 1.0 and _fit_rows(first, val_fraction) < MIN_FIT_ROWS:
            raise ConfigError(
                f"evaluate.learning_curve: fraction {fraction} of masks.fit_models={models} is {first} models, "
                f"leaving {max(0, _fit_rows(first, val_fraction))} to fit after fit.val_fraction={val_fraction}; "
                f"at least {MIN_FIT_ROWS} are needed: drop the fraction or raise masks.fit_models"
            )


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
    """Conv and custom models need images; a custom factory must build a model for this data; a user
    LightningModule must import, be one, and give logits for this data (``_check_lightning``)."""
    if model["lightning"] is not None:
        _check_lightning(model, feature_shape, num_classes)
        return
    arch = model["arch"]
    if arch in ("logreg", "mlp"):
        return
    image_shape = (1, *feature_shape) if len(feature_shape) == 2 else tuple(feature_shape)
    if len(image_shape) != 3:
        raise ConfigError(
            f"model.arch={excerpt(arch)} takes images [C, H, W] (or [H, W]), but this dataset's examples have shape "
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
        raise ConfigError(f"model.arch={excerpt(arch)} is not a model factory: {exc}") from None


def _check_lightning(model: dict, feature_shape: tuple[int, ...], num_classes: int) -> None:
    """Import ``model.lightning`` (pytorch_lightning too: a second or two, paid only when it is set), check
    it is a LightningModule with forward, training_step and configure_optimizers, build it once with
    ``model.lightning_args`` and run its forward on two zero examples of this data's shape."""
    if model["stacking"] not in ("auto", "loop"):
        raise ConfigError(
            f"model.stacking={model['stacking']!r} applies to dmflow's own models; with model.lightning "
            "choose 'auto' (stacked with torch.func where the module allows) or 'loop'"
        )
    shape = (1, *feature_shape) if len(feature_shape) == 2 else tuple(feature_shape)
    try:
        check_lightning_class(
            load_lightning_class(model["lightning"]), shape, num_classes=num_classes, args=model["lightning_args"]
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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

    Besides the schema, it checks the data itself (``dmflow.data.sizing.dataset_info``),
    the alphas, the devices and a custom model factory, before any job. Problems that
    leave a usable config (targets of classes the training set lacks) are issued as
    ``DataWarning`` warnings.
    """
    _check_size(config)
    if YTE_KEY in config:
        raise ConfigError(_YTE_REFUSED)
    cfg = copy.deepcopy(dict(config))
    errors = sorted(validator().iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(jsonschema.exceptions.best_match(errors)))
    cfg["results"] = _check_results(cfg["results"])
    _divisible(cfg, "fit_models", "chunk_size")
    _divisible(cfg, "eval_models", "eval_chunk_size")
    _check_fit_rows(cfg)
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
    if cfg["model"]["lightning"] is not None and cfg["baselines"]["enabled"] and "trak" in cfg["baselines"]["methods"]:
        raise ConfigError(
            "baselines.methods has 'trak', which does not train a model.lightning module (it trains dmflow's own "
            "models); leave 'trak' out of baselines.methods or baselines.enabled false"
        )
    if cfg["fit"]["cvxpy_solver"] and cfg["fit"]["solver"] == "cvxpy":
        import cvxpy  # heavy; only when the cvxpy solver is asked for

        if cfg["fit"]["cvxpy_solver"] not in cvxpy.installed_solvers():
            raise ConfigError(
                f"fit.cvxpy_solver={cfg['fit']['cvxpy_solver']!r} is not installed; choose one of {', '.join(cvxpy.installed_solvers())}"
            )
    return cfg


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a config file holds, read as plain data, as Snakemake reads a ``--configfile``
    (JSON first, else YAML) but never running code.

    ``dmflow check-config`` and the Snakefile (on each of ``workflow.configfiles``) read a file
    through this one function, so both refuse the same files.

    Parameters
    ----------
    path : str or Path
        The config file.

    Returns
    -------
    dict
        Its top-level mapping (``{}`` for an empty file), not yet validated (``validate_config``).

    Raises
    ------
    ConfigError
        One line naming the file: unreadable or not UTF-8; invalid YAML or YAML tags that build
        Python objects; nested too deeply; aliases expanding past ``MAX_CONFIG_VALUES`` values or
        referring to themselves; not a mapping; a YTE template (a top-level ``__use_yte__``).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the config file ({reason})") from None
    try:
        try:
            raw = json.loads(text)
        except ValueError:
            raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: nests lists or mappings too deeply to read (a config may nest {MAX_CONFIG_DEPTH} levels)"
        ) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    try:
        _check_size(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if YTE_KEY in raw:
        raise ConfigError(f"{path}: {_YTE_REFUSED}")
    return raw


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a config file (``read_config_file``) and validate it (``validate_config``)."""
    return validate_config(read_config_file(path))


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
