"""The docs state what the code defines: the store's arrays, the status codes, the layout of results."""

from __future__ import annotations

import re

from dmflow.core.codes import DATAMODEL_FLAGS, MODEL_STATUS, describe
from dmflow.data.prepare import DATA_NAMES
from dmflow.store.formats import STORE_NAMES

from helpers import REPO


def test_the_readme_states_the_stores_arrays_and_the_status_codes_as_the_code_defines_them():
    readme = (REPO / "README.md").read_text()
    store_row = next(line for line in readme.splitlines() if line.startswith("| `store/{alpha}/{split}/`"))
    assert re.findall(r"(\w+)\.npy", store_row) == list(STORE_NAMES)
    assert f"({describe(MODEL_STATUS)})" in readme and f"({describe(DATAMODEL_FLAGS)})" in readme


def test_the_readme_states_the_data_files_arrays_as_the_code_declares_them():
    readme = (REPO / "README.md").read_text()
    data_row = next(line for line in readme.splitlines() if line.startswith("| `data.npz` |"))
    assert data_row.split("`")[3].split(", ") == list(DATA_NAMES)


def test_every_test_the_guarantees_name_exists():
    """docs/guarantees.md cites tests by name; each must exist, or a promise is unproven."""
    import ast

    text = (REPO / "docs" / "guarantees.md").read_text()
    cited, module = [], None
    for match in re.finditer(r"`(test_\w+\.py)?::(test_\w+)`", text):  # `::name` continues the module before it
        module = match.group(1) or module
        cited.append((module, match.group(2)))
    assert len(cited) >= 15
    for module, name in cited:
        tree = ast.parse((REPO / "tests" / module).read_text())
        names = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
        assert name in names, f"docs/guarantees.md cites {module}::{name}, which does not exist"
