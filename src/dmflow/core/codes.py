"""Status codes written into stage files: one definition, read by every stage and the docs."""

from __future__ import annotations

STATUS_OK = 0
"""A model (one row and replicate of a chunk or store) trained without diverging."""
STATUS_DIVERGED = 1
"""Its loss or margins became non-finite; it is kept in the store and left out downstream."""
MODEL_STATUS = {STATUS_OK: "ok", STATUS_DIVERGED: "diverged"}

FLAG_OK = 0
FLAG_CONSTANT = 1
"""The target's margins do not vary over the usable rows: zero weights."""
FLAG_NOT_CONVERGED = 4
"""The solver hit ``fit.max_iter`` somewhere on the target's path; it keeps its last iterate."""
DATAMODEL_FLAGS = {
    FLAG_OK: "ok",
    FLAG_CONSTANT: "constant margins",
    FLAG_NOT_CONVERGED: "solver hit max_iter",
}


def describe(codes: dict[int, str]) -> str:
    """``0 ok, 1 diverged``: how the README and docstrings state a set of codes."""
    return ", ".join(f"{code} {meaning}" for code, meaning in codes.items())
