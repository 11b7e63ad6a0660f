"""User model factories: ``model.arch: "package.module:factory"``.

The config check imports the factory's module (so its top-level code runs then) and
calls the factory once on the dataset's shape, before any job. Loading is kept apart
from the networks, so that it needs torch only when there is a factory to check.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_factory(spec: str) -> Callable:
    """Import ``"package.module:factory"``; the working directory is importable too.

    Raises
    ------
    ValueError
        One line naming ``model.arch`` and what is wrong with it.
    """
    if not FACTORY_PATTERN.match(spec):
        raise ValueError(f"model.arch={spec!r}: a custom model is given as 'package.module:factory'")
    module_name, attr = spec.split(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model.arch={spec!r}: cannot import {module_name} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model.arch={spec!r}: {module_name} has no callable {attr}")
    return factory


def check_factory(factory: Callable, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Call ``factory(input_shape=..., num_classes=...)`` and run its model on two zero images.

    Raises
    ------
    ValueError
        One line saying what the factory did instead of returning an ``nn.Module`` that
        maps [2, *input_shape] to [2, num_classes].
    """
    import torch  # heavy; only when a custom model is configured

    call = f"factory(input_shape={tuple(input_shape)}, num_classes={num_classes})"
    try:
        model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
    except Exception as exc:  # a user's code: any failure is the answer
        raise ValueError(f"calling it as {call} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{call} returned {type(model).__name__}, not a torch.nn.Module")
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise ValueError(
            f"its model fails on a batch of shape {[2, *input_shape]}: {type(exc).__name__}: {exc}"
        ) from None
    if tuple(getattr(out, "shape", ())) != (2, num_classes):
        raise ValueError(
            f"its model maps a batch of shape {[2, *input_shape]} to {list(getattr(out, 'shape', []))}, "
            f"not [2, {num_classes}] (one logit per class)"
        )
