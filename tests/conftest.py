"""Fixtures only; shared helpers live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import Workflow


@pytest.fixture(scope="session")
def tiny_data() -> dict[str, np.ndarray]:
    """The digits data as the workflow prepares it, with 120 training examples and 40 targets."""
    from dmflow.data.prepare import prepare_data

    return prepare_data({"name": "digits", "num_train": 120, "num_targets": 40, "standardize": True}, seed=0)


@pytest.fixture()
def workflow(tmp_path: Path) -> Workflow:
    return Workflow(tmp_path)
