"""User model factories, ``model.arch: "package.module:factory"``, and user LightningModules,
``model.lightning: "package.module:Class"`` (trained by ``dmflow.training.user_module``).

The config check imports the factory's or the class's module (so its top-level code runs
then) and builds a model once on the dataset's shape, before any job. Loading is kept apart
from the networks, so that it needs torch (and pytorch_lightning) only when there is a user
model to check.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
LIGHTNING_KEY = "model.lightning"


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


def load_lightning_class(spec: str) -> type:
    """Import ``"package.module:Class"`` (the working directory is importable too) and check that it is a
    LightningModule defining ``forward``, ``training_step`` and ``configure_optimizers``.

    Parameters
    ----------
    spec : str
        ``model.lightning``.

    Returns
    -------
    type
        The class.

    Raises
    ------
    ValueError
        One line naming ``model.lightning`` and what is wrong with it.
    """
    import pytorch_lightning as pl  # heavy; only when a LightningModule is configured

    where = f"{LIGHTNING_KEY}={spec!r}"
    if not isinstance(spec, str) or not FACTORY_PATTERN.match(spec):
        raise ValueError(f"{where}: a LightningModule is given as 'package.module:Class'")
    module_name, attr = spec.split(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where}: cannot import {module_name} ({exc}); is it on PYTHONPATH?") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        what = (
            "nothing" if cls is None else type(cls).__name__ if not isinstance(cls, type) else f"class {cls.__name__}"
        )
        raise ValueError(
            f"{where}: {module_name}.{attr} is {what}, not a subclass of pytorch_lightning.LightningModule"
        )
    missing = [
        name
        for name in ("forward", "training_step", "configure_optimizers")
        if getattr(cls, name) is getattr(pl.LightningModule, name)
    ]
    if missing:
        raise ValueError(f"{where}: {cls.__name__} does not define {', '.join(missing)} (it must define all three)")
    return cls


def build_user_module(cls: type, input_shape: Sequence[int], *, num_classes: int, args: dict):
    """``cls(input_shape=tuple(input_shape), num_classes=num_classes, **args)``."""
    return cls(input_shape=tuple(int(s) for s in input_shape), num_classes=int(num_classes), **args)


def check_lightning_class(cls: type, input_shape: Sequence[int], *, num_classes: int, args: dict) -> None:
    """Build the class once and run its ``forward`` on two zero examples.

    Parameters
    ----------
    cls : type
        From ``load_lightning_class``.
    input_shape : sequence of int
        One example's shape: ``(d,)`` or ``(C, H, W)``.
    num_classes : int
    args : dict
        ``model.lightning_args``.

    Raises
    ------
    ValueError
        One line saying what the class did instead of giving logits [2, num_classes].
    """
    import torch  # heavy; only when a LightningModule is configured

    call = f"{cls.__name__}(input_shape={tuple(input_shape)}, num_classes={num_classes}, **model.lightning_args)"
    try:
        module = build_user_module(cls, input_shape, num_classes=num_classes, args=args)
    except Exception as exc:  # a user's code: any failure is the answer
        raise ValueError(f"{LIGHTNING_KEY}: {call} raised {type(exc).__name__}: {exc}") from None
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise ValueError(
            f"{LIGHTNING_KEY}: its forward fails on a batch of shape {[2, *input_shape]}: {type(exc).__name__}: {exc}"
        ) from None
    if tuple(getattr(out, "shape", ())) != (2, num_classes):
        raise ValueError(
            f"{LIGHTNING_KEY}: its forward maps a batch of shape {[2, *input_shape]} to {list(getattr(out, 'shape', []))}, "
            f"not [2, {num_classes}] (one logit per class)"
        )
