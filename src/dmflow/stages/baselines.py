"""Rules of ``rules/baselines.smk``: ``baseline_scores`` computes one baseline's attribution [n, T]
(once per run); ``compare_methods`` scores each baseline on an alpha's eval store with the evaluate
stage's ``score_attribution`` and puts every method side by side, by compute."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from dmflow.attribution import BASELINE_METHODS
from dmflow.attribution import baselines as methods
from dmflow.core.device import resolve_device
from dmflow.core.io import atomic_save_json, atomic_save_npy, load_json, load_npz, save_figure, write_table
from dmflow.core.layout import Layout
from dmflow.evaluation.compare import comparison_table
from dmflow.plots import figures
from dmflow.stages.evaluate import score_run_attribution
from dmflow.training.settings import TrainSettings

log = logging.getLogger(__name__)


def baseline_scores(
    data: Path,
    *,
    method: str,
    settings: TrainSettings,
    baselines: dict,
    seed: int,
    scores: Path,
    info: Path,
    threads: int = 1,
) -> dict:
    """Write one baseline's scores float32 [n, T] (``.npy``) and its record (``.json``: models trained,
    wall-seconds, settings); returns the record.

    ``baselines``: the config's ``baselines`` section (``trak_models``, ``trak_proj_dim``, ``device``).
    """
    if method not in BASELINE_METHODS:
        raise ValueError(f"baseline {method!r} is not one of {', '.join(BASELINE_METHODS)}")
    torch.set_num_threads(max(1, int(threads)))
    arrays = load_npz(data)
    start = time.perf_counter()
    if method == "trak":
        device = resolve_device(baselines.get("device", "auto"), "baselines.device")
        result, extra = methods.trak_scores(
            arrays,
            settings=settings,
            models=int(baselines["trak_models"]),
            proj_dim=baselines.get("trak_proj_dim", "auto"),
            seed=seed,
            device=device,
        )
        extra["device"] = device
    else:
        result = methods.input_similarity(
            arrays["X_train"], arrays["y_train"], x_target=arrays["X_target"], y_target=arrays["y_target"]
        )
        extra = {"models": 0}
    record = {
        "method": method,
        "models_trained": extra.pop("models"),
        "seconds": time.perf_counter() - start,
        "threads": int(threads),
        **extra,
    }
    atomic_save_npy(Path(scores), result)
    atomic_save_json(Path(info), record)
    log.info("%s: %d models trained, %.1f s", method, record["models_trained"], record["seconds"])
    return record


def compare_methods(results: Path, *, alpha: str, methods: Sequence[str], table: Path, figure: Path) -> pd.DataFrame:
    """Score each baseline on the eval store of ``alpha`` (``evaluation/{alpha}/methods/NAME.{csv,json}``),
    then write the comparison table (``dmflow.evaluation.compare``) and its figure, LDS against compute."""
    layout = Layout(results)
    scored = {}
    for name in methods:
        _, summary = score_run_attribution(results, Path(layout.baseline_scores(name)), alpha=alpha, name=name)
        scored[name] = (summary, load_json(Path(layout.baseline_info(name))))
    manifest = load_json(Path(layout.manifest(alpha, "fit")))
    curve_path = Path(layout.curve_table(alpha))
    datamodels = load_json(Path(layout.eval_summary(alpha)))
    rows = comparison_table(
        datamodels,
        fit_models=int(manifest["num_models"]),
        fit_seconds=manifest.get("train_seconds"),
        curve=pd.read_csv(curve_path) if curve_path.is_file() else None,
        baselines=scored,
    )
    write_table(rows, Path(table))
    save_figure(figures.comparison_figure(rows, ceiling=datamodels["ceiling_mean"]["mean"]), Path(figure))
    for r in rows.itertuples():
        log.info("%s: %d models, %.1f s, LDS vs seed mean %.3f", r.method, r.models_trained, r.seconds, r.lds_mean)
    return rows
