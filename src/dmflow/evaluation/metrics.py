"""How well datamodels predict margins on masks they never saw: LDS, Pearson, ceilings.

Definitions (docs/design.md): per target, Pearson and Spearman (LDS) correlation over
eval masks between predicted and actual margin, against one seed's margin and against
the mean over seeds; the noise ceiling is the correlation between two independent
retrainings of the same masks, and a perfect predictor would reach its square root
against one run (Spearman-Brown for the seed mean).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from dmflow.store.formats import Datamodels, Store

MIN_CEILING = 0.1
"""Below this noise ceiling retraining noise swamps any signal: no fraction of the ceiling is reported."""
CONSTANT_SPREAD = 1e-5
"""A target's predictions whose spread over the eval masks is at most this share of their largest size are
constant (float32's rounding of ``mask @ weight`` aside): its correlations are undefined (NaN)."""
CONSTANT_PREDICTIONS = (
    "LDS undefined: constant predictions (mask @ scores is the same on every eval mask: scores constant "
    "per target, with subsets of one size, or zero)"
)


def constant_predictions(pred: np.ndarray) -> np.ndarray:
    """bool [T]: the targets whose predictions [m, T] are the same on every mask (``CONSTANT_SPREAD``)."""
    pred = np.asarray(pred, dtype=np.float64)
    return pred.max(axis=0) - pred.min(axis=0) <= CONSTANT_SPREAD * np.abs(pred).max(axis=0)


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


CORRELATIONS = ("pearson_single", "lds_single", "pearson_mean", "lds_mean")
"""Per-target correlations of a prediction with the eval margins (one seed, the seed mean)."""
ERRORS = ("mse_single", "mse_mean")
"""Per-target mean squared errors: only for predictions on the margins' scale (datamodels, with their bias)."""
CEILINGS = ("replicate_corr", "ceiling_single", "ceiling_mean")
"""Per-target noise ceilings of the eval store, the same for every predictor."""


def score(pred: np.ndarray, store: Store, *, bias: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-target scores [T] of predictions [m, T] against an eval store's margins [m, R, T].

    The one implementation behind the evaluate stage, the learning curve and the scoring
    of any attribution method. Correlations (``CORRELATIONS``) and ceilings
    (``CEILINGS``) depend on ``pred`` only up to a constant per target, so ``pred`` may
    leave out a bias; given ``bias`` (float [T]), the errors (``ERRORS``) of
    ``pred + bias`` are added.

    Parameters
    ----------
    pred : float [m, T]
        One prediction per eval mask and target.
    store : Store
        The eval store: margins float32 [m, R, T], status uint8 [m, R].
    bias : float [T], optional
        Added to ``pred`` for the mean squared errors only.

    Returns
    -------
    dict of str to float64 [T]
        ``CORRELATIONS``, then ``ERRORS`` (with ``bias`` only), then ``CEILINGS``.
    """
    ok = store.ok
    margins = np.asarray(store.margins, dtype=np.float64)
    single = np.where(ok[:, :1], margins[:, 0], np.nan)
    mean = seed_mean(margins, ok)
    rows_single, rows_mean = ok[:, 0], ok.any(1)
    agreement = replicate_agreement(margins, ok)
    ceil_single, ceil_mean = ceilings(agreement, margins.shape[1])
    out = {
        "pearson_single": pearson(pred[rows_single], single[rows_single]),
        "lds_single": spearman(pred[rows_single], single[rows_single]),
        "pearson_mean": pearson(pred[rows_mean], mean[rows_mean]),
        "lds_mean": spearman(pred[rows_mean], mean[rows_mean]),
    }
    if bias is not None:
        full = pred + np.asarray(bias, dtype=pred.dtype)
        out["mse_single"] = np.mean((full[rows_single] - single[rows_single]) ** 2, axis=0)
        out["mse_mean"] = np.mean((full[rows_mean] - mean[rows_mean]) ** 2, axis=0)
    out.update(replicate_corr=agreement, ceiling_single=ceil_single, ceiling_mean=ceil_mean)
    return out


def score_table(
    pred: np.ndarray, store: Store, *, target_ids: np.ndarray, bias: np.ndarray | None = None
) -> tuple[pd.DataFrame, dict]:
    """Per-target table and summary of predictions [m, T] on an eval store (``score``, then ``summarise``).

    Parameters
    ----------
    pred : float [m, T]
        One prediction per eval mask and target (a bias may be left out: see ``score``).
    store : Store
        The eval store.
    target_ids : int64 [T]
        Each target's id, the table's ``target_id`` column.
    bias : float [T], optional
        With it, the table and summary also hold the mean squared errors of ``pred + bias``.

    Returns
    -------
    table : DataFrame
        One row per target: ``target``, ``target_id`` and every key of ``score``.
    summary : dict
        ``summarise``'s headline numbers.
    """
    table = pd.DataFrame({"target": np.arange(pred.shape[1]), "target_id": np.asarray(target_ids)})
    constant = constant_predictions(pred)
    for key, values in score(pred, store, bias=bias).items():
        table[key] = np.where(constant, np.nan, values) if key in CORRELATIONS else values
    summary = summarise(table, store)
    summary["counts"]["targets_constant_predictions"] = int(constant.sum())
    return table, summary


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.nanmean(values)), "median": float(np.nanmedian(values))}


def fraction_of_ceiling(score: float, ceiling: float) -> float | None:
    """score / ceiling; None where the ceiling is below ``MIN_CEILING``."""
    return float(score / ceiling) if ceiling >= MIN_CEILING else None


def summarise(table: pd.DataFrame, store: Store) -> dict:
    """Headline numbers of an evaluation table (means, medians, fractions of the ceiling, counts).

    The errors are summarised where the table has them (datamodels; not attributions).
    """
    with warnings.catch_warnings():  # a column of NaN only (no target scored) has a NaN mean, said in counts
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {key: _stats(table[key].to_numpy()) for key in (*CORRELATIONS, *ERRORS, *CEILINGS) if key in table}
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


def evaluate(dm: Datamodels, store: Store) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Score datamodels on an eval store: (per-target table, summary, predictions float32 [m, T]).

    ``dm``: the datamodels (``dmflow.store.formats.open_datamodels``: weight [n, T], bias, lam,
    nnz, flags, target_ids [T]). The correlations are those of ``mask @ weight``,
    exactly as ``score_attribution`` scores ``weight`` as an attribution; the
    predictions returned and the errors add the bias (``predict``).
    """
    linear = predict(store.masks, dm.weight, np.zeros(dm.weight.shape[1], dtype=np.float32))
    table, summary = score_table(linear, store, target_ids=dm.target_ids, bias=dm.bias)
    table["nnz"], table["lam"], table["flags"] = dm.nnz, dm.lam, dm.flags
    return table, summary, linear + dm.bias


def attribution_problem(shape: tuple[int, ...], dtype: np.dtype, *, n: int, num_targets: int) -> str | None:
    """Why a score matrix of this shape and dtype cannot be an attribution of n training examples to
    ``num_targets`` targets (None: it can, as [n, T] or as [T, n]); from a ``.npy`` header, before loading."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        return f"dtype {dtype} is not a real number type; scores must be integers or floats"
    if len(shape) != 2 or sorted(shape) != sorted((n, num_targets)):
        return (
            f"shape {list(shape)} does not fit this run: scores must be [n, T] = [{n}, {num_targets}] "
            f"(training examples x targets) or [T, n] = [{num_targets}, {n}]"
        )
    return None


def orient_attribution(scores: np.ndarray, *, n: int, num_targets: int, transpose: bool | None = None) -> np.ndarray:
    """float32 [n, T]: an attribution's scores, from [n, T] or [T, n], checked; raises ValueError in one line.

    Parameters
    ----------
    scores : int or float [n, T] or [T, n]
        ``scores[i, t]``: training example i's attribution to target t (the larger, the more
        i is predicted to raise t's margin), or its transpose.
    n, num_targets : int
        The run's training examples and targets.
    transpose : bool, optional
        True: ``scores`` is [T, n]. False: it is [n, T]. None (default): [n, T] when that
        fits (always, when n == T), else [T, n] when that fits.

    Returns
    -------
    float32 [n, T]
        Finite scores, for ``predict`` (the prediction of a mask is ``mask @ scores``).
    """
    scores = np.asarray(scores)
    problem = attribution_problem(scores.shape, scores.dtype, n=n, num_targets=num_targets)
    if problem:
        raise ValueError(problem)
    if transpose is None:
        transpose = scores.shape != (n, num_targets)
    want = (num_targets, n) if transpose else (n, num_targets)
    if scores.shape != want:
        layout = "[T, n]" if transpose else "[n, T]"
        raise ValueError(f"shape {list(scores.shape)} is not {layout} = {list(want)} (n={n}, T={num_targets})")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: inf, refused below
        out = np.ascontiguousarray((scores.T if transpose else scores).astype(np.float32, copy=False))
    bad = ~np.isfinite(out)
    if bad.any():
        i, t = np.argwhere(bad)[0]
        raise ValueError(
            f"{int(bad.sum())} scores are NaN, infinite or beyond float32's range (the first: "
            f"training example {i}, target {t}: {(scores.T if transpose else scores)[i, t]}); every score must be finite"
        )
    return out


def score_attribution(
    scores: np.ndarray, store: Store, *, target_ids: np.ndarray, transpose: bool | None = None
) -> tuple[pd.DataFrame, dict]:
    """Score any data attribution on an eval store exactly as ``evaluate`` scores the datamodels.

    An attribution's prediction for a mask is ``mask @ scores`` (``predict`` without a
    bias: no correlation depends on one), scored by ``score_table``: LDS and Pearson
    against one seed and the seed mean, the noise ceilings and the fraction of the
    ceiling, per target and as a summary. No mean squared errors: an attribution has no
    scale.

    Parameters
    ----------
    scores : int or float [n, T] or [T, n]
        The attribution (``orient_attribution``).
    store : Store
        The eval store, masks bool [m, n] and margins float32 [m, R, T].
    target_ids : int64 [T]
        Each target's id.
    transpose : bool, optional
        See ``orient_attribution``.

    Returns
    -------
    table : DataFrame
        One row per target: ``target``, ``target_id``, ``CORRELATIONS``, ``CEILINGS``.
    summary : dict
        Means and medians, the fraction of the ceiling, counts (``targets_constant_predictions``: the
        targets whose correlations are undefined, NaN in the table).

    Raises
    ------
    ValueError
        One line: the scores (``orient_attribution``), or predictions constant for every target.
    """
    n, num_targets = store.masks.shape[1], store.margins.shape[2]
    weight = orient_attribution(scores, n=n, num_targets=num_targets, transpose=transpose)
    pred = predict(store.masks, weight, np.zeros(num_targets, dtype=np.float32))
    if constant_predictions(pred).all():
        raise ValueError(f"{CONSTANT_PREDICTIONS} for every one of the {num_targets} targets; nothing to score")
    return score_table(pred, store, target_ids=target_ids)
