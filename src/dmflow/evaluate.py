"""Stage evaluate: how well the datamodels predict margins on masks they never saw.

Definitions (docs/design.md): per target, Pearson and Spearman (LDS) correlation over
eval masks between predicted and actual margin, against one seed's margin and against
the mean over seeds; the noise ceiling is the correlation between two independent
retrainings of the same masks, and a perfect predictor would reach its square root
against one run (Spearman-Brown for the seed mean).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from dmflow.io import atomic_path, atomic_save_json, load_npz
from dmflow.store import Store, open_store

log = logging.getLogger(__name__)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise Pearson correlation of [m, T] arrays, ignoring NaN rows per column; NaN if constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    valid = np.isfinite(a) & np.isfinite(b)
    a, b = np.where(valid, a, 0.0), np.where(valid, b, 0.0)
    count = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        am = a.sum(0) / count
        bm = b.sum(0) / count
        da, db = np.where(valid, a - am, 0.0), np.where(valid, b - bm, 0.0)
        return (da * db).sum(0) / np.sqrt((da * da).sum(0) * (db * db).sum(0))


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise Spearman correlation (average ranks for ties) of [m, T] arrays without NaN."""
    return pearson(rankdata(a, axis=0), rankdata(b, axis=0))


def replicate_agreement(margins: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Mean Pearson correlation over pairs of replicates of the same masks, per target ([m, R, T] -> [T])."""
    pairs = list(itertools.combinations(range(margins.shape[1]), 2))
    if not pairs:
        return np.full(margins.shape[2], np.nan)
    corrs = []
    for r, s in pairs:
        both = (ok[:, r] & ok[:, s])[:, None]
        corrs.append(pearson(np.where(both, margins[:, r], np.nan), np.where(both, margins[:, s], np.nan)))
    return np.nanmean(np.stack(corrs), axis=0)


def ceilings(agreement: np.ndarray, replicates: int) -> tuple[np.ndarray, np.ndarray]:
    """Best correlation a perfect predictor can reach against one run and against the R-seed mean."""
    rho = np.clip(agreement, 0, 1)
    mean_reliability = replicates * rho / (1 + (replicates - 1) * rho)
    return np.sqrt(rho), np.sqrt(mean_reliability)


def predict(masks: np.ndarray, weight: np.ndarray, bias: np.ndarray, block_rows: int = 4096) -> np.ndarray:
    """mask @ weight + bias for every mask row, read in blocks (masks may be a memmap)."""
    out = np.empty((masks.shape[0], weight.shape[1]), dtype=np.float32)
    for start in range(0, masks.shape[0], block_rows):
        out[start : start + block_rows] = masks[start : start + block_rows].astype(np.float32) @ weight + bias
    return out


def score(pred: np.ndarray, store: Store) -> dict[str, np.ndarray]:
    """Per-target scores of predictions [m, T] against an eval store's margins [m, R, T]."""
    ok = store.ok
    margins = np.asarray(store.margins, dtype=np.float64)
    single = np.where(ok[:, :1], margins[:, 0], np.nan)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(np.where(ok[:, :, None], margins, 0.0), axis=1) / ok.sum(1)[:, None]
    rows_single, rows_mean = ok[:, 0], ok.any(1)
    agreement = replicate_agreement(margins, ok)
    ceil_single, ceil_mean = ceilings(agreement, margins.shape[1])
    return {
        "pearson_single": pearson(pred[rows_single], single[rows_single]),
        "lds_single": spearman(pred[rows_single], single[rows_single]),
        "pearson_mean": pearson(pred[rows_mean], mean[rows_mean]),
        "lds_mean": spearman(pred[rows_mean], mean[rows_mean]),
        "mse_single": np.mean((pred[rows_single] - single[rows_single]) ** 2, axis=0),
        "mse_mean": np.mean((pred[rows_mean] - mean[rows_mean]) ** 2, axis=0),
        "replicate_corr": agreement,
        "ceiling_single": ceil_single,
        "ceiling_mean": ceil_mean,
    }


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.nanmean(values)), "median": float(np.nanmedian(values))}


MIN_CEILING = 0.1


def _fraction(score: float, ceiling: float) -> float | None:
    """score / ceiling; None where the ceiling is below MIN_CEILING (retraining noise swamps any signal)."""
    return float(score / ceiling) if ceiling >= MIN_CEILING else None


def summarise(table: pd.DataFrame, store: Store) -> dict:
    """Headline numbers of an evaluation table (means, medians, fractions of the ceiling, counts)."""
    out = {key: _stats(table[key].to_numpy()) for key in (
        "pearson_single", "lds_single", "pearson_mean", "lds_mean", "mse_single", "mse_mean",
        "replicate_corr", "ceiling_single", "ceiling_mean")}
    out["fraction_of_ceiling"] = {
        "pearson_single": _fraction(np.nanmean(table.pearson_single), np.nanmean(table.ceiling_single)),
        "pearson_mean": _fraction(np.nanmean(table.pearson_mean), np.nanmean(table.ceiling_mean)),
    }
    out["counts"] = {
        "targets": int(len(table)),
        "targets_scored": int(np.isfinite(table.lds_mean).sum()),
        "eval_masks": int(store.masks.shape[0]),
        "replicates": int(store.margins.shape[1]),
        "diverged_models_excluded": int((~store.ok).sum()),
    }
    return out


def evaluate(dm: dict[str, np.ndarray], store: Store) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Score datamodels on an eval store: (per-target table, summary, predictions [m, T])."""
    pred = predict(store.masks, dm["weight"], dm["bias"])
    table = pd.DataFrame({"target": np.arange(dm["weight"].shape[1]), "target_id": dm["target_ids"]})
    for key, values in score(pred, store).items():
        table[key] = values
    table["nnz"], table["lam"], table["flags"] = dm["nnz"], dm["lam"], dm["flags"]
    return table, summarise(table, store), pred


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Write a table atomically as parquet (``.parquet``) or csv (anything else)."""
    with atomic_path(Path(path), Path(path).suffix) as tmp:
        if str(path).endswith(".parquet"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


def run_evaluate(datamodels_path: Path, eval_store_path: Path, table_path: Path, summary_path: Path, scatter_path: Path) -> dict:
    """Evaluate, then write the per-target table, summary.json and the scatter/histogram figure."""
    from dmflow.figures import evaluation_figure

    store = open_store(eval_store_path)
    table, summary, pred = evaluate(load_npz(datamodels_path), store)
    write_table(table, table_path)
    atomic_save_json(summary_path, summary)
    evaluation_figure(pred, store, table, scatter_path)
    log.info("LDS vs seed mean %.3f (ceiling %.3f); vs one seed %.3f (ceiling %.3f)",
             summary["lds_mean"]["mean"], summary["ceiling_mean"]["mean"], summary["lds_single"]["mean"], summary["ceiling_single"]["mean"])
    return summary
