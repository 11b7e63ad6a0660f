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

from dmflow.core import provenance
from dmflow.core.errors import StoreError
from dmflow.core.io import atomic_save_json, save_figure, write_table
from dmflow.core.layout import Layout, alpha_dir, method_name_problem
from dmflow.core.progress import Progress
from dmflow.core.schema import defaults
from dmflow.core.tables import ATTRIBUTION_SCORES, DATAMODEL_SCORES, LEARNING_CURVE
from dmflow.evaluation import learning_curve as curve
from dmflow.evaluation import metrics, scoring
from dmflow.lasso.settings import FitSettings
from dmflow.plots import figures
from dmflow.store.formats import open_datamodels, open_store

log = logging.getLogger(__name__)


def evaluate(datamodels: Path, eval_store: Path, *, table: Path, summary: Path, figure: Path) -> dict:
    """Write the per-target table, ``summary.json`` and the predicted-vs-actual figure; returns the summary."""
    store = open_store(eval_store)
    fitted = open_datamodels(Path(datamodels))
    scores, headline, pred = metrics.evaluate(fitted, store)
    headline["provenance"] = provenance.provenance()
    provenance.note_changes(
        headline["provenance"],
        [
            (f"the eval store {eval_store}", store.manifest),
            (f"the datamodels {datamodels}", {"provenance": fitted.provenance}),
        ],
        subject="evaluate",
    )
    write_table(DATAMODEL_SCORES.check(scores, where=table), table)
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
    threads: int | None = None,
) -> pd.DataFrame:
    """Refit on each fraction of the fit store's models (``datamodels``, the fit on all of them, stands
    in for 1.0) on ``threads`` torch threads (default ``fit.threads``); write the curve's table and figure."""
    torch.set_num_threads(max(1, int(defaults("fit")["threads"] if threads is None else threads)))
    fitted = open_datamodels(Path(datamodels)) if datamodels else None
    fit, held_out = open_store(fit_store), open_store(eval_store)
    progress = Progress(
        f"learning_curve {alpha_dir(fit.manifest['alpha'])}",
        curve.refits(fractions, datamodels=fitted) * int(fit.manifest["num_targets"]),
        "targets",
    )
    rows = curve.learning_curve(
        fit, held_out, fractions, settings=settings, seed=seed, datamodels=fitted, progress=progress
    )
    progress.finish()
    write_table(LEARNING_CURVE.check(rows, where=table), table)
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
    """Score an attribution method on an eval store as ``evaluate`` scores the datamodels
    (``dmflow.evaluation.scoring.score_attribution``: every input checked first, one StoreError line
    each); write its table (csv) and summary (json) where given.

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
        True: ``scores`` is [T, n]; False: [n, T]; None: [n, T] when it fits, else [T, n].

    Returns
    -------
    table, summary
        As ``dmflow.evaluation.scoring.score_attribution``.
    """
    scores_table, headline = scoring.score_attribution(
        scores, eval_store, name=name, target_ids=target_ids, transpose=transpose
    )
    if table is not None:
        write_table(ATTRIBUTION_SCORES.check(scores_table, where=table), Path(table))
    if summary is not None:
        atomic_save_json(Path(summary), headline)
    log.info("%s", scoring.headline_line(headline))
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
    return score_attribution(
        scores,
        Path(layout.store(key, "eval")),
        name=name,
        table=Path(layout.method_table(key, name)),
        summary=Path(layout.method_summary(key, name)),
        target_ids=scoring.run_target_ids(results, key),
        transpose=transpose,
    )
