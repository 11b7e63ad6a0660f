"""Rules of ``rules/evaluate.smk``: ``evaluate`` scores the datamodels on the eval store;
``learning_curve`` refits on fractions of the fit store and scores each. Also, outside the
rules, ``score_attribution`` (``dmflow score-attribution``, ``DatamodelRun.lds``) scores any
attribution method on the same eval store with the same code."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dmflow.core.io import atomic_save_json, load_json, load_npz, save_figure, sha256_file, write_table
from dmflow.core.layout import Layout, alpha_dir, method_name_problem
from dmflow.evaluation import learning_curve as curve
from dmflow.evaluation import metrics
from dmflow.lasso.settings import FitSettings
from dmflow.plots import figures
from dmflow.stages.collect import open_store
from dmflow.store.schema import StoreError, open_npy

log = logging.getLogger(__name__)


def evaluate(datamodels: Path, eval_store: Path, *, table: Path, summary: Path, figure: Path) -> dict:
    """Write the per-target table, ``summary.json`` and the predicted-vs-actual figure; returns the summary."""
    store = open_store(eval_store)
    scores, headline, pred = metrics.evaluate(load_npz(datamodels), store)
    write_table(scores, table)
    atomic_save_json(summary, headline)
    save_figure(figures.evaluation_figure(pred, metrics.seed_mean(store.margins, store.ok), scores), figure)
    log.info(
        "LDS vs seed mean %.3f (ceiling %.3f); vs one seed %.3f (ceiling %.3f)",
        headline["lds_mean"]["mean"],
        headline["ceiling_mean"]["mean"],
        headline["lds_single"]["mean"],
        headline["ceiling_single"]["mean"],
    )
    return headline


def learning_curve(
    fit_store: Path,
    eval_store: Path,
    *,
    fractions: Sequence[float],
    settings: FitSettings,
    seed: int,
    table: Path,
    figure: Path,
    datamodels: Path | None = None,
    threads: int = 1,
) -> pd.DataFrame:
    """Refit on each fraction of the fit store's models (``datamodels``, the fit on all of them, stands
    in for 1.0) on ``threads`` torch threads; write the curve's table and figure."""
    torch.set_num_threads(max(1, int(threads)))
    fitted = load_npz(datamodels) if datamodels else None
    rows = curve.learning_curve(
        open_store(fit_store), open_store(eval_store), fractions, settings=settings, seed=seed, datamodels=fitted
    )
    write_table(rows, table)
    save_figure(figures.learning_curve_figure(rows), figure)
    return rows


def score_attribution(
    scores: Path | np.ndarray,
    eval_store: Path,
    *,
    name: str | None = None,
    table: Path | None = None,
    summary: Path | None = None,
    target_ids: np.ndarray | None = None,
    transpose: bool | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score an attribution method on an eval store as ``evaluate`` scores the datamodels; write its table
    (csv) and summary (json) where given.

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
    table, summary : Path, optional
        Where to write the per-target table (csv) and the summary (json).
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
    manifest_path = Path(eval_store) / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{eval_store}: no manifest.json (no eval store here; rerun collect or import-store)")
    manifest = load_json(manifest_path, rebuild="rerun the workflow (collect rebuilds it) or import-store")
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
    if table is not None:
        write_table(scores_table, Path(table))
    if summary is not None:
        atomic_save_json(Path(summary), headline)
    log.info(
        "%s: LDS vs seed mean %.3f (ceiling %.3f); vs one seed %.3f (ceiling %.3f)",
        name or "scores",
        headline["lds_mean"]["mean"],
        headline["ceiling_mean"]["mean"],
        headline["lds_single"]["mean"],
        headline["ceiling_single"]["mean"],
    )
    return scores_table, headline


def score_run_attribution(
    results: Path, scores: Path | np.ndarray, *, alpha: float | str, name: str, transpose: bool | None = None
) -> tuple[pd.DataFrame, dict]:
    """``score_attribution`` on a run's eval store of ``alpha``, written to
    ``evaluation/{alpha}/methods/{name}.csv`` and ``.json`` (``dmflow score-attribution``).

    Parameters
    ----------
    results : Path
        The run's results folder (``Layout``).
    scores : Path or int/float array [n, T] (or [T, n])
        The attribution; see ``score_attribution``.
    alpha : float or str
        Which alpha's eval store (``store/{alpha}/eval``).
    name : str
        The method's name and file stem; checked first. Its earlier files of the same name
        are replaced; no other file is touched.
    transpose : bool, optional
        See ``score_attribution``.

    Returns
    -------
    table, summary
        As ``score_attribution``; target ids from the run's datamodels, else its ``data.npz``,
        else 0..T-1.
    """
    if problem := method_name_problem(name):
        raise StoreError(problem)
    layout, key = Layout(results), alpha_dir(alpha)
    target_ids = None
    for source in (Path(layout.datamodels(key)), Path(layout.data())):
        if source.is_file():
            with np.load(source, allow_pickle=False) as f:
                if "target_ids" in f.files:
                    target_ids = f["target_ids"]
                    break
    return score_attribution(
        scores,
        Path(layout.store(key, "eval")),
        name=name,
        table=Path(layout.method_table(key, name)),
        summary=Path(layout.method_summary(key, name)),
        target_ids=target_ids,
        transpose=transpose,
    )
