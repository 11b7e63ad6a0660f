"""User model factories: ``model.arch: "package.module:factory"``.

Kept apart from the networks (no torch import), so that the config check can import
a user's factory before any job runs without loading torch itself.
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
