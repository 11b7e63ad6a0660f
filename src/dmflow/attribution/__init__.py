"""Attribution methods other than datamodels, scored beside them (the ``baselines`` config section).

This file stays light (no torch) for the config checks; the methods are in ``baselines``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

BASELINE_METHODS = ("trak", "input_similarity")
"""The baselines a run can add (``baselines.methods``); each names its files."""

MISSING_TRAKER = (
    "baselines.methods includes 'trak' but the traker package is not installed: "
    "pip install 'dmflow[baselines]' (or set baselines.enabled: false, or leave 'trak' out of baselines.methods)"
)

TRAK_MODELS_ALLOWED = "use a model count of at least 1 or a strictly increasing list of them, e.g. [1, 2, 5, 10]"
"""What ``baselines.trak_models`` allows, as its config errors say it."""


def traker_installed() -> bool:
    """Whether ``traker`` (module ``trak``) can be imported here."""
    return importlib.util.find_spec("trak") is not None


def trak_counts(setting: int | Sequence[int]) -> list[int]:
    """The model counts of TRAK's curve (``baselines.trak_models``), ascending: an integer K is the curve
    of one point [K]; a list must be non-empty and strictly increasing, each count at least 1.

    TRAK trains the largest count once and scores each count k from its first k models.
    Raises ValueError (one line, naming the value) for anything else.
    """
    counts = [setting] if isinstance(setting, int) and not isinstance(setting, bool) else setting
    if (
        isinstance(counts, str | bytes)
        or not isinstance(counts, Sequence)
        or not counts
        or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in counts)
        or any(a >= b for a, b in zip(counts, counts[1:]))
    ):
        raise ValueError(f"baselines.trak_models={setting!r} is not allowed; {TRAK_MODELS_ALLOWED}")
    return [int(k) for k in counts]
