"""The config schema (``schemas/config.schema.yaml``): the one source of every default.

The validator here fills each property's ``default`` before checking it, so
``with_defaults({})`` is the complete default config. Settings dataclasses
(``TrainSettings``, ``FitSettings``) take their defaults from ``defaults(section)``.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import jsonschema
import yaml


@functools.cache
def _schema() -> dict:
    return yaml.safe_load(resources.files("dmflow").joinpath("schemas/config.schema.yaml").read_text())


def load_schema() -> dict:
    """The config schema shipped with the package (a fresh copy)."""
    return copy.deepcopy(_schema())


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


def validator() -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator of the schema that fills in defaults as it checks."""
    return _with_defaults(jsonschema.Draft202012Validator)(_schema())


@functools.cache
def _defaults() -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for _ in validator().iter_errors(cfg):
        raise AssertionError("the schema's defaults do not validate")  # pragma: no cover
    return cfg


def defaults(section: str | None = None) -> dict[str, Any]:
    """The default config, or one section of it (a fresh copy)."""
    cfg = _defaults()
    return copy.deepcopy(cfg if section is None else cfg[section])


def builtin_architectures() -> tuple[str, ...]:
    """The names ``model.arch`` accepts besides a ``"package.module:factory"``."""
    return tuple(_schema()["properties"]["model"]["properties"]["arch"]["anyOf"][0]["enum"])


def param_section(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """What of a config section goes into the rules' JSON param of it (Snakemake reruns a job when
    its params change): every key but those the schema marks ``x-result: false`` (threads, memory,
    display: no model or fit changes) and those marked ``x-omit-default: true`` while they have their
    default (keys added after results existed; the commands fill defaults back in)."""
    props = _schema()["properties"][section]["properties"]
    return {
        k: v
        for k, v in values.items()
        if k in props
        and props[k].get("x-result", True)
        and not (props[k].get("x-omit-default") and v == props[k].get("default"))
    }
