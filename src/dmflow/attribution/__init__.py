"""Attribution methods other than datamodels, scored beside them (the ``baselines`` config section).

This file stays light (no torch) for the config checks; the methods are in ``baselines``.
"""

from __future__ import annotations

import importlib.util

BASELINE_METHODS = ("trak", "input_similarity")
"""The baselines a run can add (``baselines.methods``); each names its files."""

MISSING_TRAKER = (
    "baselines.methods includes 'trak' but the traker package is not installed: "
    "pip install 'dmflow[baselines]' (or set baselines.enabled: false, or leave 'trak' out of baselines.methods)"
)


def traker_installed() -> bool:
    """Whether ``traker`` (module ``trak``) can be imported here."""
    return importlib.util.find_spec("trak") is not None
