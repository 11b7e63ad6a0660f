"""Rules of ``rules/evaluate.smk``: ``evaluate`` scores the datamodels on the eval store;
``learning_curve`` refits on fractions of the fit store and scores each."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from dmflow.core.io import atomic_save_json, load_npz, save_figure, write_table
from dmflow.evaluation import learning_curve as curve
from dmflow.evaluation import metrics
from dmflow.lasso.path import FitSettings
from dmflow.plots import figures
from dmflow.stages.collect import open_store

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
