"""Rules of ``rules/baselines.smk``: ``baseline_scores`` computes one baseline's attribution [n, T]
(once per run; TRAK's at each model count of its curve); ``compare_methods`` scores each baseline's
points on an alpha's eval store as the datamodels are scored (``dmflow.evaluation.scoring``) and puts every method
side by side, by compute."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dmflow.attribution import BASELINE_METHODS, trak_counts
from dmflow.attribution import baselines as methods
from dmflow.core import provenance
from dmflow.core.device import resolve_device
from dmflow.core.io import atomic_save_json, atomic_save_npy, load_json, load_npz, save_figure, write_table
from dmflow.core.layout import Layout, alpha_dir, baseline_point_name
from dmflow.core.progress import Progress
from dmflow.core.schema import defaults
from dmflow.core.tables import ATTRIBUTION_SCORES, COMPARE, LEARNING_CURVE
from dmflow.evaluation import scoring
from dmflow.evaluation.compare import comparison_table
from dmflow.plots import figures
from dmflow.store.formats import read_store_manifest
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
    curve: Path | None = None,
    threads: int | None = None,
) -> dict:
    """Write one baseline's scores float32 [n, T] (``.npy``), the scores of the smaller points of its
    curve over its model count float32 [P, n, T] (``curve``, ``Layout.baseline_curve``; P = 0 for a
    method of one point) and its record (``.json``); returns the record.

    ``baselines``: the config's ``baselines`` section (``trak_models``, an integer or a list of
    counts, ``trak_proj_dim``, ``device``). The record holds the models trained, the job's
    wall-seconds, the settings and ``points``: one per count, ascending (``models_trained``,
    ``seconds``, ``name``: what it is scored as, ``dmflow.core.layout.baseline_point_name``); the
    last is the method's own ``scores``, point i < P is ``curve[i]``.
    """
    if method not in BASELINE_METHODS:
        raise ValueError(f"baseline {method!r} is not one of {', '.join(BASELINE_METHODS)}")
    threads = defaults("baselines")["threads"] if threads is None else threads
    torch.set_num_threads(max(1, int(threads)))
    arrays = load_npz(data)
    start = time.perf_counter()
    if method == "trak":
        device = resolve_device(baselines.get("device", "auto"), "baselines.device")
        progress = Progress(f"baseline_scores {method}", 3 * trak_counts(baselines["trak_models"])[-1], "model passes")
        points, extra = methods.trak_curve(
            arrays,
            settings=settings,
            counts=trak_counts(baselines["trak_models"]),
            proj_dim=baselines.get("trak_proj_dim", "auto"),
            seed=seed,
            device=device,
            progress=progress,
        )
        progress.finish()
        extra["device"] = device
        counts, point_seconds = extra.pop("counts"), extra.pop("point_seconds")
    else:
        points = [
            methods.input_similarity(
                arrays["X_train"], arrays["y_train"], x_target=arrays["X_target"], y_target=arrays["y_target"]
            )
        ]
        extra = {"models": 0}
        counts, point_seconds = [0], [None]
    seconds = time.perf_counter() - start
    record = {
        "method": method,
        "models_trained": extra.pop("models"),
        "seconds": seconds,
        "threads": int(threads),
        **extra,
        "provenance": provenance.provenance(device=extra.get("device", "cpu")),
        "points": [
            {
                "models_trained": int(k),
                "seconds": seconds if s is None else float(s),
                "name": baseline_point_name(method, k, largest=i == len(counts) - 1),
            }
            for i, (k, s) in enumerate(zip(counts, point_seconds))
        ],
    }
    atomic_save_npy(Path(scores), points[-1])
    if curve is not None:
        smaller = np.stack(points[:-1]) if len(points) > 1 else np.zeros((0, *points[-1].shape), np.float32)
        atomic_save_npy(Path(curve), smaller)
    atomic_save_json(Path(info), record)
    log.info("%s: %d models trained, %.1f s", method, record["models_trained"], record["seconds"])
    return record


def _points(layout: Layout, method: str) -> list[tuple[dict, np.ndarray | Path]]:
    """A baseline's points (record entry, scores) from its files; a record without ``points`` is one point."""
    info = load_json(Path(layout.baseline_info(method)))
    entries = info.get("points") or [
        {"models_trained": info["models_trained"], "seconds": info["seconds"], "name": method}
    ]
    curve_path = Path(layout.baseline_curve(method))
    curve = np.load(curve_path, mmap_mode="r") if len(entries) > 1 else None
    if curve is not None and curve.shape[0] != len(entries) - 1:
        raise ValueError(
            f"{curve_path} holds {curve.shape[0]} points but {layout.baseline_info(method)} lists "
            f"{len(entries) - 1} below the largest: rerun baseline_scores for {method}"
        )
    last = Path(layout.baseline_scores(method))
    return [(entry, last if i == len(entries) - 1 else np.asarray(curve[i])) for i, entry in enumerate(entries)]


def compare_methods(results: Path, *, alpha: str, methods: Sequence[str], table: Path, figure: Path) -> pd.DataFrame:
    """Score each baseline's points on the eval store of ``alpha`` (``evaluation/{alpha}/methods/NAME.{csv,json}``,
    NAME from each point's record), then write the comparison table (``dmflow.evaluation.compare``: one row
    per point) and its figure, LDS against compute."""
    layout, alpha = Layout(results), alpha_dir(alpha)
    target_ids = scoring.run_target_ids(results, alpha)
    scored = {}
    for method in methods:
        scored[method] = []
        for entry, scores in _points(layout, method):
            name = entry["name"]
            eval_store = Path(layout.store(alpha, "eval"))
            point, headline = scoring.score_attribution(scores, eval_store, name=name, target_ids=target_ids)
            point_table = Path(layout.method_table(alpha, name))
            write_table(ATTRIBUTION_SCORES.check(point, where=point_table), point_table)
            atomic_save_json(Path(layout.method_summary(alpha, name)), headline)
            log.info("%s", scoring.headline_line(headline))
            scored[method].append((headline, entry))
    manifest = read_store_manifest(Path(layout.store(alpha, "fit")))
    curve_path = Path(layout.curve_table(alpha))
    datamodels = load_json(Path(layout.eval_summary(alpha)))
    rows = comparison_table(
        datamodels,
        fit_models=int(manifest["num_models"]),
        fit_seconds=manifest.get("train_seconds"),
        curve=LEARNING_CURVE.read(curve_path) if curve_path.is_file() else None,
        baselines=scored,
    )
    write_table(COMPARE.check(rows, where=table), Path(table))
    save_figure(figures.comparison_figure(rows, ceiling=datamodels["ceiling_mean"]["mean"]), Path(figure))
    for r in rows.itertuples():
        log.info("%s: %d models, %.1f s, LDS vs seed mean %.3f", r.method, r.models_trained, r.seconds, r.lds_mean)
    return rows
