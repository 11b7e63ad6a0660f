"""Any attribution [n, T] scored on an eval store as the datamodels are: checks first, then the scores.
Nothing is written here; the evaluate and baselines stages write what this returns."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dmflow.core.errors import StoreError
from dmflow.core.io import sha256_file
from dmflow.core.layout import Layout, alpha_dir, method_name_problem
from dmflow.evaluation import metrics
from dmflow.store.formats import DATAMODELS_ARRAYS, open_npy, open_store, read_store_manifest

log = logging.getLogger(__name__)

TARGET_IDS = next(spec.name for spec in DATAMODELS_ARRAYS if spec.name == "target_ids")
"""The key of the targets' ids, in the datamodels file and in ``data.npz``."""


def score_attribution(
    scores: Path | np.ndarray,
    eval_store: Path,
    *,
    name: str | None = None,
    target_ids: np.ndarray | None = None,
    transpose: bool | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score an attribution method on an eval store as the datamodels are scored.

    Every input is checked before any work, each problem in one line (StoreError): the name
    (a safe file name), the file (a readable ``.npy``, never unpickled), the dtype (integer
    or float), the shape (the store's [n, T] or [T, n]) and the values (finite in float32).

    Parameters
    ----------
    scores : Path or int/float array [n, T] (or [T, n])
        ``scores[i, t]``: training example i's attribution to target t; a ``.npy`` file or an array.
    eval_store : Path
        The eval store folder (masks [m, n], margins [m, R, T]).
    name : str, optional
        The method's name, recorded in the summary; it must be a safe file name.
    target_ids : int64 [T], optional
        The targets' ids (default 0..T-1).
    transpose : bool, optional
        True: ``scores`` is [T, n]; False: [n, T]; None: [n, T] when it fits (always when
        n == T), else [T, n] (``dmflow.evaluation.metrics.orient_attribution``).

    Returns
    -------
    table : DataFrame
        Per target: ``target``, ``target_id``, LDS and Pearson vs one seed and the seed mean,
        the replicates' agreement and both ceilings.
    summary : dict
        Means and medians, the fraction of the ceiling, counts, and the method's name and source.
    """
    if name is not None and (problem := method_name_problem(name)):
        raise StoreError(problem)
    manifest = read_store_manifest(Path(eval_store))
    n, num_targets = manifest["num_train"], manifest["num_targets"]
    source = Path(scores) if isinstance(scores, str | Path) else None
    array = open_npy(source, "the scores [n, T]") if source is not None else np.asarray(scores)
    where = source if source is not None else "scores"
    problem = metrics.attribution_problem(array.shape, array.dtype, n=n, num_targets=num_targets)
    if problem:
        raise StoreError(f"{where}: {problem}")
    try:
        weight = metrics.orient_attribution(np.asarray(array), n=n, num_targets=num_targets, transpose=transpose)
    except ValueError as exc:
        raise StoreError(f"{where}: {exc}") from None
    transposed = transpose if transpose is not None else array.shape != (n, num_targets)
    del array
    ids = np.arange(num_targets) if target_ids is None else np.asarray(target_ids)
    if ids.shape != (num_targets,):
        raise StoreError(f"{eval_store}: {len(ids)} target ids for a store of {num_targets} targets")
    store = open_store(Path(eval_store))
    try:
        scores_table, headline = metrics.score_attribution(weight, store, target_ids=ids, transpose=False)
    except ValueError as exc:
        raise StoreError(f"{where}: {exc}") from None
    if constant := headline["counts"]["targets_constant_predictions"]:
        log.warning(
            "%s: %d of %d targets: %s; NaN in their rows", where, constant, num_targets, metrics.CONSTANT_PREDICTIONS
        )
    headline["method"] = {
        "name": name,
        "scores": None if source is None else str(source),
        "scores_sha256": None if source is None else sha256_file(source),
        "transposed": bool(transposed),
    }
    return scores_table, headline


def headline_line(headline: dict) -> str:
    """The log line of a scored method (``score_attribution``'s summary), once its files are written."""
    return (
        f"{headline['method']['name'] or 'scores'}: LDS vs seed mean {headline['lds_mean']['mean']:.3f} "
        f"(ceiling {headline['ceiling_mean']['mean']:.3f}); vs one seed {headline['lds_single']['mean']:.3f} "
        f"(ceiling {headline['ceiling_single']['mean']:.3f})"
    )


def run_target_ids(results: Path, alpha: float | str) -> np.ndarray | None:
    """The targets' ids of a run's ``alpha``: from its datamodels, else its ``data.npz``, else None (0..T-1)."""
    layout, key = Layout(results), alpha_dir(alpha)
    for source in (Path(layout.datamodels(key)), Path(layout.data())):
        if source.is_file():
            with np.load(source, allow_pickle=False) as f:
                if TARGET_IDS in f.files:
                    return f[TARGET_IDS]
    return None
