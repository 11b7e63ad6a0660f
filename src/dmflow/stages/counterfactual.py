"""Rules of ``rules/counterfactual.smk``: ``counterfactual_design`` writes the masks to retrain
and the case table; ``counterfactual_analyse`` compares the retrained margins with the predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dmflow.core.io import atomic_save_json, atomic_save_npy, save_figure, write_table
from dmflow.core.tables import BRITTLENESS, CF_CASES, CF_CHANGES, CF_FLIPS
from dmflow.evaluation import counterfactual as cf
from dmflow.plots import figures
from dmflow.store.formats import open_chunk, open_datamodels


def counterfactual_design(
    datamodels: Path,
    *,
    alpha: float,
    num_targets: int,
    ks: Sequence[int],
    seed: int,
    masks_out: Path,
    cases_out: Path,
) -> pd.DataFrame:
    """Write the counterfactual masks (trained by ``train_chunk``, split counterfactual) and the case table."""
    dm = open_datamodels(Path(datamodels))
    masks, cases = cf.design(dm.weight, dm.bias, alpha=alpha, num_targets=num_targets, ks=ks, seed=seed)
    atomic_save_npy(masks_out, masks)
    write_table(CF_CASES.check(cases, where=cases_out), cases_out)
    return cases


def counterfactual_analyse(
    cases: Path,
    trained: Path,
    *,
    changes: Path,
    flips: Path,
    brittleness: Path,
    summary: Path,
    figure: Path,
    brittleness_figure: Path,
) -> dict:
    """Read the case table and the retrained chunk; write the tables, ``summary.json`` and the figures."""
    case_table = CF_CASES.read(cases)
    chunk = open_chunk(Path(trained))
    rows, flip_rates, brittle, headline = cf.analyse(case_table, chunk["margins"], chunk["status"])
    write_table(CF_CHANGES.check(rows, where=changes), changes)
    write_table(CF_FLIPS.check(flip_rates, where=flips), flips)
    write_table(BRITTLENESS.check(brittle, where=brittleness), brittleness)
    atomic_save_json(summary, headline)
    save_figure(figures.counterfactual_figure(rows, flip_rates, headline), figure)
    save_figure(figures.brittleness_figure(brittle, headline["ks"]), brittleness_figure)
    return headline
