"""The baselines on a finished run: TRAK (K models, projection dimension k) and input similarity, timed and scored.

Each baseline is computed as the ``baseline_scores`` rule computes it (``dmflow.attribution.baselines``,
the config's ``model`` and ``train`` settings) and scored on the run's eval store by the evaluate stage's
``score_attribution``; the datamodels' row comes from the run's own files (evaluation summary, fit
manifest's training seconds). Seconds are wall-clock inside the process (not Python's start-up).

Run:  python benchmarks/baselines.py [--results results/default] [--config config.yaml]
          [--models 10] [--proj-dims auto] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from dmflow.attribution.baselines import input_similarity, trak_scores
from dmflow.config import load_config
from dmflow.core.io import load_npz
from dmflow.core.layout import Layout, alpha_dir
from dmflow.stages.evaluate import score_attribution
from dmflow.training.settings import TrainSettings

import record

HEADER = (
    "threads",
    "n",
    "method",
    "models",
    "proj_dim",
    "seconds",
    "LDS vs one seed",
    "LDS vs seed mean",
    "fraction of ceiling",
)
NOTES = """Baselines on a finished run's eval store (`python benchmarks/baselines.py --results results/default`):
**method** `trak` (traker 0.3.2, its CPU projector, float32; **models** full-data models of the run's
architecture, **proj_dim** k), `input_similarity` (no models), and the run's own `datamodels` (models: the fit
models; seconds: their training jobs' wall-seconds from the fit store manifest, the lasso fit not counted).
**seconds**: wall-clock of training the models and computing the scores, inside the process; LDS are means over
targets; fraction of ceiling: mean Pearson vs the seed mean over its mean ceiling."""


def _cells(threads: int, n: int, method: str, models: int, k: object, seconds: float | None, summary: dict) -> list:
    return [
        str(threads),
        str(n),
        method,
        str(models),
        str(k),
        record.fmt(seconds, ".1f"),
        record.fmt(summary["lds_single"]["mean"], ".3f"),
        record.fmt(summary["lds_mean"]["mean"], ".3f"),
        record.fmt(summary["fraction_of_ceiling"]["pearson_mean"], ".3f"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/default"))
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--alpha", default=None, help="default: the config's first alpha")
    parser.add_argument("--models", type=int, nargs="+", default=[10])
    parser.add_argument("--proj-dims", nargs="+", default=["auto"])
    parser.add_argument("--threads", type=int, default=2)
    record.add_arguments(parser)
    args = parser.parse_args()
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, "baselines.py", HEADER)
    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    machine = record.machine_cells()
    cfg = load_config(args.config)
    layout = Layout(args.results)
    alpha = alpha_dir(args.alpha if args.alpha is not None else cfg["masks"]["alphas"][0])
    eval_store = Path(layout.store(alpha, "eval"))
    data = load_npz(Path(layout.data()))
    n = data["X_train"].shape[0]
    settings = TrainSettings.from_config(cfg["model"], cfg["train"])
    rows = []

    manifest = json.loads(Path(layout.manifest(alpha, "fit")).read_text())
    summary = json.loads(Path(layout.eval_summary(alpha)).read_text())
    rows.append(
        _cells(args.threads, n, "datamodels", manifest["num_models"], "-", manifest.get("train_seconds"), summary)
    )

    start = time.perf_counter()
    scores = input_similarity(data["X_train"], data["y_train"], x_target=data["X_target"], y_target=data["y_target"])
    seconds = time.perf_counter() - start
    rows.append(_cells(args.threads, n, "input_similarity", 0, "-", seconds, score_attribution(scores, eval_store)[1]))

    for models in args.models:
        for k in args.proj_dims:
            proj_dim = k if k == "auto" else int(k)
            start = time.perf_counter()
            scores, info = trak_scores(data, settings=settings, models=models, proj_dim=proj_dim, seed=cfg["seed"])
            seconds = time.perf_counter() - start
            scored = score_attribution(scores, eval_store)[1]
            rows.append(_cells(args.threads, n, "trak", models, info["proj_dim"], seconds, scored))
    for row in rows:
        print(" | ".join(row), flush=True)
        if args.record:
            record.append_row(results_file, "baselines.py", HEADER, [*machine, *row], notes=NOTES)
    if args.record:
        print(f"recorded {len(rows)} rows in {results_file} under '## baselines.py'")


if __name__ == "__main__":
    main()
