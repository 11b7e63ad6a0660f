"""How well datamodels predict margins on masks they never saw: LDS, Pearson, ceilings.

Definitions (docs/design.md): per target, Pearson and Spearman (LDS) correlation over
eval masks between predicted and actual margin, against one seed's margin and against
the mean over seeds; the noise ceiling is the correlation between two independent
retrainings of the same masks, and a perfect predictor would reach its square root
against one run (Spearman-Brown for the seed mean).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from dmflow.store.schema import Store

MIN_CEILING = 0.1
"""Below this noise ceiling retraining noise swamps any signal: no fraction of the ceiling is reported."""


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


def predict(masks: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, block_rows: int = 4096) -> np.ndarray:
    """float32 [m, T]: ``mask @ weight + bias`` for every mask row [m, n] (a memmap is read in row blocks).

    The one definition of a datamodel's prediction; one mask [n] gives [T].
    """
    if masks.ndim == 1:
        return masks.astype(np.float32) @ weight + bias
    out = np.empty((masks.shape[0], weight.shape[1]), dtype=np.float32)
    for start in range(0, masks.shape[0], block_rows):
        out[start : start + block_rows] = masks[start : start + block_rows].astype(np.float32) @ weight + bias
    return out


def seed_mean(margins: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """float64 [m, T]: each row's mean margin over its replicates that did not diverge (NaN where none did).

    ``margins`` [m, R, T], ``ok`` bool [m, R].
    """
    margins = np.asarray(margins, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.nansum(np.where(ok[:, :, None], margins, 0.0), axis=1) / ok.sum(1)[:, None]


def score(pred: np.ndarray, store: Store) -> dict[str, np.ndarray]:
    """Per-target scores [T] of predictions [m, T] against an eval store's margins [m, R, T]."""
    ok = store.ok
    margins = np.asarray(store.margins, dtype=np.float64)
    single = np.where(ok[:, :1], margins[:, 0], np.nan)
    mean = seed_mean(margins, ok)
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


def fraction_of_ceiling(score: float, ceiling: float) -> float | None:
    """score / ceiling; None where the ceiling is below ``MIN_CEILING``."""
    return float(score / ceiling) if ceiling >= MIN_CEILING else None


def summarise(table: pd.DataFrame, store: Store) -> dict:
    """Headline numbers of an evaluation table (means, medians, fractions of the ceiling, counts)."""
    out = {
        key: _stats(table[key].to_numpy())
        for key in (
            "pearson_single",
            "lds_single",
            "pearson_mean",
            "lds_mean",
            "mse_single",
            "mse_mean",
            "replicate_corr",
            "ceiling_single",
            "ceiling_mean",
        )
    }
    out["fraction_of_ceiling"] = {
        "pearson_single": fraction_of_ceiling(np.nanmean(table.pearson_single), np.nanmean(table.ceiling_single)),
        "pearson_mean": fraction_of_ceiling(np.nanmean(table.pearson_mean), np.nanmean(table.ceiling_mean)),
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
    """Score datamodels on an eval store: (per-target table, summary, predictions float32 [m, T]).

    ``dm`` holds the arrays of ``datamodels/{alpha}.npz`` (weight [n, T], bias, lam,
    nnz, flags, target_ids [T]).
    """
    pred = predict(store.masks, dm["weight"], dm["bias"])
    table = pd.DataFrame({"target": np.arange(dm["weight"].shape[1]), "target_id": dm["target_ids"]})
    for key, values in score(pred, store).items():
        table[key] = values
    table["nnz"], table["lam"], table["flags"] = dm["nnz"], dm["lam"], dm["flags"]
    return table, summarise(table, store), pred
