"""Paper-scale fitting: the cost of the moments and of the whole fit stage against n, beside today's path.

For each n of ``--sizes`` a synthetic store like a real alpha = 0.5 store: m = 10 n rows,
every mask with exactly n/2 ones, T targets whose margins are planted sparse datamodels
(``--support`` non-zero weights each, N(0, 0.5^2)) plus N(0, 1) noise. Each stage runs as
the workflow runs it, a fresh process with ``--threads`` torch threads:

* moments: ``dmflow moments`` once per store;
* fit: ``dmflow fit-block`` for every block of ``--targets-per-job`` targets, one after the
  other (their summed time is what the stage costs the machine);
* today's path (``--max-old-n`` and below): the dense reference ``fit_targets`` on the masks,
  one process per block as ``fit_block`` ran it before the moments (float64 moments of the
  block's rows, then every solve over all n features).

It prints, per n: seconds and peak RSS (``ru_maxrss`` of each process) of the moments and
of the fit stage, today's fit stage and the ratio, the largest weight difference between
the two paths, and the error against the planted weights (||W - W*|| / ||W*|| and the mean
correlation of predicted and planted margins on fresh masks); then the log-log slope of
each cost against n (between consecutive sizes and a least-squares fit). Nothing is
asserted: the goals are printed as met or not.

Run:  python benchmarks/scale.py [--sizes 1000 2000 4000 8000 16000] [--targets 2000] [--quick] [--record]

``--quick`` is a tiny version (n = 200, 400; T = 40) that only checks the script runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmflow.core.io import atomic_save_json, sha256_file
from dmflow.evaluation.metrics import pearson
from dmflow.store.formats import STORE_ARRAYS, STORE_FORMAT
from dmflow.store.masks import pack

import record

HEADER = (
    "threads",
    "n",
    "m",
    "T",
    "per job",
    "moments s",
    "moments GB",
    "fit s",
    "fit job GB",
    "stage s",
    "today s",
    "today job GB",
    "today / stage",
    "max w diff",
    "rel. error vs planted",
    "pred. r vs planted",
    "kernels",
)
NOTES = """Synthetic alpha = 0.5 stores (`python benchmarks/scale.py`; see its docstring): m = 10 n rows, T targets with
planted sparse datamodels. **moments s**, **fit s**: the moments job and the fit jobs (summed; one after the other,
each with **threads** threads), **stage s** their sum; **GB**: the largest peak RSS of one job of each. **today s**:
the dense reference path, one job per block as before the moments (`-` above `--max-old-n`); **today / stage**: its
time over the new stage's; **max w diff**: largest weight difference between the two paths. **rel. error vs
planted**: ||W - W*|| / ||W*|| of the new path; **pred. r vs planted**: mean correlation over targets of predicted and
planted margins on 2000 fresh masks. **kernels**: the moments job's Gram / cross products, as `dmflow.core.kernels`
chose them (its manifest; `-`: rows before the dispatch point, int8 Gram always)."""


def synthetic_store(folder: Path, *, n: int, num_targets: int, support: int, seed: int) -> np.ndarray:
    """Write a store in the collect stage's format; returns the planted weights float32 [n, T]."""
    rng = np.random.default_rng(seed)
    m = 10 * n
    weights = np.zeros((n, num_targets), np.float32)
    for t in range(num_targets):
        weights[rng.choice(n, support, replace=False), t] = rng.normal(0, 0.5, support)
    folder.mkdir(parents=True)
    packed = np.lib.format.open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(m, -(-n // 8)))
    margins = np.lib.format.open_memmap(folder / "margins.npy", mode="w+", dtype=np.float32, shape=(m, 1, num_targets))
    base = np.zeros(n, dtype=bool)
    base[: n // 2] = True
    w = torch.from_numpy(weights)
    for start in range(0, m, 8192):
        rows = min(8192, m - start)
        masks = rng.permuted(np.broadcast_to(base, (rows, n)), axis=1)
        packed[start : start + rows] = pack(masks)
        signal = torch.from_numpy(masks.astype(np.float32)) @ w
        margins[start : start + rows, 0] = signal.numpy() + 1.0 + rng.normal(0, 1, (rows, num_targets))
    packed.flush()
    margins.flush()
    del packed, margins
    arrays = {
        "status": np.zeros((m, 1), np.uint8),
        "seeds": np.arange(m, dtype=np.int64)[:, None],
        "acc_target": np.zeros((m, 1), np.float32),
        "acc_subset": np.zeros((m, 1), np.float32),
    }
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    meta = {}
    for spec in STORE_ARRAYS:
        array = np.load(folder / f"{spec.name}.npy", mmap_mode="r")
        meta[spec.name] = {
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "sha256": sha256_file(folder / f"{spec.name}.npy"),
        }
    manifest = {
        "format": STORE_FORMAT,
        "alpha": 0.5,
        "split": "fit",
        "seed": seed,
        "num_models": m,
        "num_train": n,
        "num_targets": num_targets,
        "replicates": 1,
        "chunk_size": m,
        "diverged": 0,
        "diverged_fraction": 0.0,
        "chunks": [],
        "arrays": meta,
    }
    atomic_save_json(folder / "manifest.json", manifest)  # sealed, as collect writes it
    return weights


def run_job(args: list[str]) -> tuple[float, float]:
    """Run a command in a fresh process: (seconds, its peak RSS in GB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20  # ru_maxrss in KB on Linux


TODAY = """
import sys, numpy as np, torch
from dmflow.core.io import atomic_save_npz
from dmflow.lasso.path import fit_targets
from dmflow.lasso.settings import FitSettings
from dmflow.store.formats import open_store
from dmflow.lasso.settings import FitSettings, split_validation_rows
from dmflow.store.schema import usable_rows
store_dir, block, per_job, threads, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
store = open_store(store_dir)
t = store.manifest["num_targets"]
cols = slice(block * per_job, min((block + 1) * per_job, t))
fit_rows, val_rows = split_validation_rows(usable_rows(store.status), 0.1, seed=0, alpha=0.5)
res = fit_targets(store.masks, store.margins[:, 0, cols], fit_rows=fit_rows, val_rows=val_rows, settings=FitSettings())
atomic_save_npz(out, res)
"""


def measure(n: int, args: argparse.Namespace, work: Path) -> dict:
    t = args.targets
    store = work / f"store{n}"
    planted = synthetic_store(store, n=n, num_targets=t, support=args.support, seed=n)
    masks_bytes = (store / "masks.npy").stat().st_size
    dm = [sys.executable, "-m", "dmflow"]
    threads = str(args.threads)
    out = {"n": n, "m": 10 * n, "masks_ratio": 10 * n * n / masks_bytes}
    out["moments_s"], out["moments_gb"] = run_job(
        [
            *dm,
            "moments",
            "--store",
            str(store),
            "--val-fraction",
            "0.1",
            "--seed",
            "0",
            "--threads",
            threads,
            "--out-dir",
            str(work / "mom"),
        ]
    )
    chosen = json.loads((work / "mom" / "manifest.json").read_text()).get("kernels", {})
    out["kernels"] = f"{chosen.get('gram', '?')} / {chosen.get('cross', '?')}"
    blocks = -(-t // args.targets_per_job)
    weights, fit_s, fit_gb = [], 0.0, 0.0
    for b in range(blocks):
        path = work / f"block{b}.npz"
        s, gb = run_job(
            [
                *dm,
                "fit-block",
                "--moments",
                str(work / "mom"),
                "--store-manifest",
                str(store / "manifest.json"),
                "--block",
                str(b),
                "--targets-per-job",
                str(args.targets_per_job),
                "--fit",
                "{}",
                "--threads",
                threads,
                "--out",
                str(path),
            ]
        )
        fit_s, fit_gb = fit_s + s, max(fit_gb, gb)
        weights.append(np.load(path)["weight"])
    weight = np.concatenate(weights, axis=1)
    out.update(fit_s=fit_s, fit_gb=fit_gb, stage_s=out["moments_s"] + fit_s)
    out["rel_error"] = float(np.linalg.norm(weight - planted) / np.linalg.norm(planted))
    fresh = (
        np.random.default_rng(1).permuted(np.broadcast_to(np.arange(n) < n // 2, (2000, n)), axis=1).astype(np.float32)
    )
    out["pred_r"] = float(np.nanmean(pearson(fresh @ weight, fresh @ planted)))
    if n <= args.max_old_n:
        today, today_s, today_gb = [], 0.0, 0.0
        for b in range(blocks):
            path = work / f"today{b}.npz"
            s, gb = run_job(
                [sys.executable, "-c", TODAY, str(store), str(b), str(args.targets_per_job), threads, str(path)]
            )
            today_s, today_gb = today_s + s, max(today_gb, gb)
            today.append(np.load(path)["weight"])
        out.update(
            today_s=today_s,
            today_gb=today_gb,
            ratio=today_s / out["stage_s"],
            max_w_diff=float(np.abs(np.concatenate(today, axis=1) - weight).max()),
        )
    shutil.rmtree(store)
    for p in work.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return out


def slopes(rows: list[dict], key: str) -> tuple[list[float], float]:
    """Log-log slopes of ``key`` against n between consecutive sizes, and of a least-squares line."""
    pts = [(math.log(r["n"]), math.log(r[key])) for r in rows if r.get(key)]
    steps = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(pts, pts[1:])]
    fit = float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0]) if len(pts) > 1 else float("nan")
    return steps, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 16000])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--targets-per-job", type=int, default=400)
    parser.add_argument("--support", type=int, default=20, help="planted non-zero weights per target")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-old-n", type=int, default=8000, help="run today's path up to this n")
    parser.add_argument("--quick", action="store_true")
    record.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.targets, args.targets_per_job, args.support = [200, 400], 40, 16, 5
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, "scale.py", HEADER)
    machine = record.machine_cells()
    rows = []
    print(
        f"scale: T={args.targets} in blocks of {args.targets_per_job}, support {args.support}, "
        f"{args.threads} threads, today's path up to n={args.max_old_n}; {machine[2]}, {machine[4]}"
    )
    with tempfile.TemporaryDirectory(prefix="dmflow-scale-") as tmp:
        for n in args.sizes:
            row = measure(n, args, Path(tmp))
            rows.append(row)
            today = (
                (
                    f"today {row['today_s']:.1f} s ({row['today_gb']:.2f} GB), {row['ratio']:.1f}x, "
                    f"max w diff {row['max_w_diff']:.1e}"
                )
                if "today_s" in row
                else "today: not run"
            )
            print(
                f"n={n:6d} m={row['m']:7d}: moments {row['moments_s']:.1f} s ({row['moments_gb']:.2f} GB), fit "
                f"{row['fit_s']:.1f} s (job {row['fit_gb']:.2f} GB), stage {row['stage_s']:.1f} s; {today}; "
                f"vs planted: rel. error {row['rel_error']:.3f}, pred. r {row['pred_r']:.3f}; "
                f"kernels (Gram / cross) {row['kernels']}",
                flush=True,
            )
    for key, name in (
        ("moments_s", "moments"),
        ("fit_s", "fit (the solver)"),
        ("stage_s", "whole stage"),
        ("today_s", "today's path"),
    ):
        steps, fit = slopes(rows, key)
        if steps:
            print(f"log-log slope of {name}: {', '.join(f'{s:.2f}' for s in steps)} between sizes; {fit:.2f} overall")
    for row in rows:
        if row["n"] == 8000 and "ratio" in row:
            gram_gb = 8 * row["n"] ** 2 / 2**30  # the fit and validation rows' Grams, float32, memory-mapped
            print(
                f"goal n=8000: stage >= 6x today's: {row['ratio']:.1f}x {'met' if row['ratio'] >= 6 else 'NOT met'}; "
                f"weights within 1e-4: {row['max_w_diff']:.1e} {'met' if row['max_w_diff'] <= 1e-4 else 'NOT met'}; "
                f"fit job <= shared Grams + 1.5 GB: {row['fit_gb']:.2f} <= {gram_gb + 1.5:.2f} "
                f"{'met' if row['fit_gb'] <= gram_gb + 1.5 else 'NOT met'}"
            )
    print(f"masks on disk: {min(r['masks_ratio'] for r in rows):.2f}x smaller than one byte per entry")
    fit_slope = slopes(rows, "fit_s")[1]
    if math.isnan(fit_slope):
        print("goal: the solver's slope <= 2.2: not measured (one size)")
    else:
        print(f"goal: the solver's slope <= 2.2: {fit_slope:.2f} {'met' if fit_slope <= 2.2 else 'NOT met'}")
    if args.record:
        for row in rows:
            cells = [
                str(args.threads),
                str(row["n"]),
                str(row["m"]),
                str(args.targets),
                str(args.targets_per_job),
                record.fmt(row["moments_s"], ".1f"),
                record.fmt(row["moments_gb"], ".2f"),
                record.fmt(row["fit_s"], ".1f"),
                record.fmt(row["fit_gb"], ".2f"),
                record.fmt(row["stage_s"], ".1f"),
                record.fmt(row.get("today_s"), ".1f"),
                record.fmt(row.get("today_gb"), ".2f"),
                record.fmt(row.get("ratio"), ".1f"),
                record.fmt(row.get("max_w_diff"), ".1e"),
                record.fmt(row["rel_error"], ".3f"),
                record.fmt(row["pred_r"], ".3f"),
                row["kernels"],
            ]
            record.append_row(results_file, "scale.py", HEADER, [*machine, *cells], notes=NOTES)
        print(f"recorded {len(rows)} rows in {results_file} under '## scale.py'")


if __name__ == "__main__":
    main()
