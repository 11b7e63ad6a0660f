"""A whole workflow run of one config, end to end, and its headline figures.

``snakemake --cores N --configfile CONFIG`` into a fresh results folder (or ``--results``
to keep it), then, from the run's own files, for the first alpha: wall time; LDS against
one seed and the seed mean and the fraction of the noise ceiling; the learning curve (LDS
vs the seed mean per model count); every baseline's best point (TRAK's largest model count,
input similarity) and, where TRAK is a curve, whether the datamodels lead it at equal
compute (``evaluation/{alpha}/compare.csv``); counterfactual retraining: the correlation of
predicted and actual changes, the least-squares slope of actual on predicted (1: the
datamodels predict the size of a change, not only its direction) and the flip rate of the
top-k removal at the largest k against k random examples.

Nothing is asserted; the figures are printed (and recorded with ``--record``).

Run:  python benchmarks/workflow_run.py --configfile configs/fashion-mnist.yaml [--cores 2] [--results DIR] [--record]
      python benchmarks/workflow_run.py --configfile ... --results DIR --from-log LOG --record
      (records a finished run of this script: wall time, cores and load from the first line it printed, saved in LOG,
      the figures again from DIR)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dmflow.config import load_config
from dmflow.core.layout import alpha_dir
from dmflow.core.tables import CF_CHANGES, COMPARE, LEARNING_CURVE
from dmflow.evaluation.compare import equal_compute

import record

REPO = Path(__file__).resolve().parents[1]
SECTION = "workflow_run.py"
HEADER = (
    "config",
    "cores",
    "1-min load",
    "end to end s",
    "n",
    "T",
    "fit models",
    "LDS one seed",
    "LDS seed mean",
    "of ceiling",
    "learning curve (models: LDS mean)",
    "baselines (models: LDS mean)",
    "cf. r",
    "cf. slope",
    "top-k / random flips",
)
NOTES = """`python benchmarks/workflow_run.py --configfile CONFIG` (see its docstring): one whole run of **config** with
`snakemake --cores` **cores**, the first alpha's figures from the run's own files. **LDS** (Spearman, mean over
targets) against one seed and the seed mean; **of ceiling**: Pearson vs the seed mean over the noise ceiling;
**learning curve**: LDS vs the seed mean per fit-model count; **baselines**: each method's points (TRAK per model
count); **cf.**: counterfactual retraining, the correlation and least-squares slope of actual on predicted margin
changes, and the flip rate of removing the top-k helpers against k random examples at the largest k. **1-min load**:
at the start / the mean of samples every 10 s while the run ran (its own jobs count: ~cores on a quiet machine)."""


def headline(results: Path, alpha: str) -> dict:
    """The run's figures (see the module docstring) from its summary, comparison and counterfactual files."""
    ev = json.loads((results / "evaluation" / alpha / "summary.json").read_text())
    out = {
        "lds_single": ev["lds_single"]["mean"],
        "lds_mean": ev["lds_mean"]["mean"],
        "ceiling": ev["fraction_of_ceiling"]["pearson_mean"],
    }
    curve = results / "evaluation" / alpha / "learning_curve.csv"
    if curve.is_file():
        table = LEARNING_CURVE.read(curve)
        out["curve"] = ", ".join(f"{int(r.num_models)}: {r.lds_mean:.3f}" for r in table.itertuples())
    compare = results / "evaluation" / alpha / "compare.csv"
    if compare.is_file():
        table = COMPARE.read(compare)
        rows = table[~table["method"].str.startswith("datamodels")]
        out["baselines"] = "; ".join(
            f"{method} " + ", ".join(f"{int(r.models_trained)}: {r.lds_mean:.3f}" for r in group.itertuples())
            for method, group in rows.groupby("method", sort=False)
        )
        if verdict := equal_compute(table, "trak"):
            out["equal_compute"] = verdict
    cf = results / "counterfactual" / alpha
    if (cf / "changes.csv").is_file():
        changes = CF_CHANGES.read(cf / "changes.csv").dropna(subset=["predicted_change", "actual_change"])
        x, y = changes["predicted_change"].to_numpy(), changes["actual_change"].to_numpy()
        summary = json.loads((cf / "summary.json").read_text())
        k = str(max(summary["ks"]))
        out.update(
            cf_r=float(np.corrcoef(x, y)[0, 1]),
            cf_slope=float(np.dot(x - x.mean(), y - y.mean()) / np.dot(x - x.mean(), x - x.mean())),
            cf_flips=f"k={k}: {summary['flip_rate_top'][k]:.2f} / {summary['flip_rate_random'][k]:.2f}",
        )
    return out


def run_workflow(configfile: Path, cores: int, results: Path) -> tuple[float, float]:
    """Wall seconds of ``snakemake --cores CORES --configfile CONFIGFILE`` with ``results`` as its results
    folder, and the mean 1-min load average sampled every 10 s while it ran (the run's own jobs included:
    about ``cores`` on an otherwise quiet machine)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", str(configfile)]
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10.0):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    try:
        subprocess.run([*cmd, "--config", f"results={results}"], check=True, cwd=REPO)
    finally:
        done.set()
    return time.perf_counter() - start, float(np.mean(samples)) if samples else float("nan")


def _logged_run(log: Path, configfile: Path) -> tuple[float, int, str]:
    """Wall seconds, cores and load cell of this script's run of ``configfile`` as it printed them to ``log``."""
    pattern = re.compile(
        rf"^{re.escape(str(configfile))}: (\d+) s on (\d+) cores \(1-min load at start / mean while running: (.+)\)$"
    )
    for line in log.read_text().splitlines():
        if match := pattern.match(line):
            return float(match[1]), int(match[2]), match[3]
    raise SystemExit(f"{log}: no line '{configfile}: N s on C cores (...)' of a finished run of this script")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: a temporary one)")
    parser.add_argument(
        "--from-log",
        type=Path,
        default=None,
        help="record the finished run this script printed to LOG (needs --results)",
    )
    record.add_arguments(parser)
    args = parser.parse_args()
    if args.from_log and not args.results:
        parser.error("--from-log needs --results: the folder of the run the log describes")
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, SECTION, HEADER)
    machine = record.machine_cells()
    load = f"{os.getloadavg()[0]:.1f}"
    config = load_config(args.configfile)
    alpha = alpha_dir(config["masks"]["alphas"][0])
    with tempfile.TemporaryDirectory(prefix="dmflow-run-") as tmp:
        results = (args.results or Path(tmp) / "results").resolve()
        if args.from_log:
            wall, args.cores, load = _logged_run(args.from_log, args.configfile)
        else:
            wall, mean_load = run_workflow(args.configfile, args.cores, results)
            load = f"{load} / {mean_load:.1f}"
        figures = headline(results, alpha)
        n = json.loads((results / "store" / alpha / "fit" / "manifest.json").read_text())
    print(f"{args.configfile}: {wall:.0f} s on {args.cores} cores (1-min load at start / mean while running: {load})")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    if args.record:
        cells = [
            Path(args.configfile).name,
            str(args.cores),
            load,
            record.fmt(wall, ".0f"),
            str(n["num_train"]),
            str(n["num_targets"]),
            str(n["num_models"]),
            record.fmt(figures["lds_single"], ".3f"),
            record.fmt(figures["lds_mean"], ".3f"),
            record.fmt(figures["ceiling"], ".3f"),
            figures.get("curve", "-"),
            figures.get("baselines", "-"),
            record.fmt(figures.get("cf_r"), ".2f"),
            record.fmt(figures.get("cf_slope"), ".2f"),
            figures.get("cf_flips", "-"),
        ]
        record.append_row(results_file, SECTION, HEADER, [*machine, *cells], notes=NOTES)
        print(f"recorded a row in {results_file} under '## {SECTION}'")


if __name__ == "__main__":
    main()
