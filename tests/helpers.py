"""What several test modules share: the repository root, tiny configs, a real Snakemake
runner, and the planted-data generators (known weights plus noise)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from dmflow.core.io import atomic_save_json, sha256_file
from dmflow.store.formats import STORE_ARRAYS, STORE_FORMAT, Store
from dmflow.store.masks import draw_masks, pack

REPO = Path(__file__).resolve().parents[1]


def tiny_config(results: Path, **overrides) -> dict:
    """A config that trains a few dozen small models in seconds (``section.key=value`` overrides)."""
    cfg = {
        "results": str(results),
        "seed": 3,
        "dataset": {"name": "digits", "num_train": 100, "num_targets": 30},
        "masks": {
            "alphas": [0.5],
            "chunk_size": 40,
            "fit_models": 80,
            "eval_chunk_size": 10,
            "eval_models": 10,
            "eval_replicates": 2,
        },
        "model": {"arch": "mlp", "hidden": [16]},
        "train": {"epochs": 3, "batch_size": 25, "stack_size": 40, "lr": 0.01},
        "fit": {"targets_per_job": 16, "num_lambdas": 8, "lambda_min_ratio": 0.01},
        "evaluate": {"learning_curve": [0.5, 1.0]},
        "counterfactual": {"num_targets": 4, "ks": [2, 5], "replicates": 2},
    }
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    return cfg


class Workflow:
    """Runs the real Snakefile in a scratch folder with a given config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in ("Snakefile", "rules", "profiles", "report", "envs"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
        self.results = root / "results"

    def write_config(self, cfg: dict) -> Path:
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    @staticmethod
    def env() -> dict[str, str]:
        """The environment of the snakemake runs: this venv's ``dmflow`` first on PATH."""
        return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def run(self, *args: str, check: bool = True, cores: int = 2) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", str(cores), *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def start(self, *args: str, cores: int = 2) -> subprocess.Popen:
        """``run`` in the background, its output in snakemake.log beside the Snakefile. ``finish`` waits for
        it; ``stop`` (for a test's finalizer) kills it and its jobs if it still runs."""
        with open(self.root / "snakemake.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "snakemake", "--cores", str(cores), *args],
                cwd=self.root,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def finish(self, proc: subprocess.Popen) -> None:
        """Wait for a ``start``ed run (as long as ``run`` would); fail as ``run`` does if it failed."""
        try:
            returncode = proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise
        if returncode != 0:
            log = (self.root / "snakemake.log").read_text(errors="replace")
            raise AssertionError(f"snakemake failed ({returncode}):\n{log[-8000:]}")

    def planned_jobs(self, *targets: str) -> dict[str, int]:
        """Job counts per rule of a dry run (the 'Job stats' table), of the whole workflow or of some targets."""
        text = self.run("--dry-run", *targets).stdout
        if "Nothing to be done" in text:
            return {}
        table = text.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
        return {name: int(count) for name, count in (line.split() for line in table) if name != "total"}

    def mtimes(self, pattern: str) -> dict[str, int]:
        return {str(p.relative_to(self.root)): p.stat().st_mtime_ns for p in sorted(self.root.glob(pattern))}


def dmflow_cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``python -m dmflow ...`` in a fresh process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "dmflow", *map(str, args)], capture_output=True, text=True, check=check, **kwargs
    )


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# --- planted data: masks with known sparse weights, plus noise ------------------------------


def planted_lasso(n=30, m=400, t=4, fixed_size=True, noise=0.3, seed=0):
    """Masks x [m, n] (fixed-size or Bernoulli), margins y [m, t] = x w + 2 + noise; w has 4 non-zero rows.

    Returns (x, y, w, support)."""
    rng = np.random.default_rng(seed)
    x = draw_masks(n, 0.5, m, rng=rng) if fixed_size else rng.random((m, n)) < 0.5
    w = np.zeros((n, t))
    support = rng.choice(n, 4, replace=False)
    w[support] = rng.choice([-1.0, 1.0], (4, t)) * rng.uniform(0.5, 1.5, (4, t))
    y = x @ w + 2.0 + noise * rng.normal(size=(m, t))
    return x, y, w, support


def planted_fit(n=40, m=1200, t=5, seed=0):
    """Fixed-size masks [m, n], margins [m, t] driven by training examples 0..2, the last target constant.

    Returns (x, y, w)."""
    rng = np.random.default_rng(seed)
    x = draw_masks(n, 0.5, m, rng=rng)
    w = np.zeros((n, t))
    w[:3] = rng.choice([-1.0, 1.0], (3, t))
    y = x @ w + 1.0 + 0.5 * rng.normal(size=(m, t))
    y[:, -1] = 4.2  # a constant target
    return x, y, w


def planted_eval_store(noise: float, m=600, n=50, t=6, reps=4, seed=0) -> tuple[Store, np.ndarray, np.ndarray]:
    """An in-memory eval store whose margins are masks @ w + 3 plus replicate noise.

    Returns (store, w [n, t], noiseless signal [m, t])."""
    rng = np.random.default_rng(seed)
    masks = draw_masks(n, 0.5, m, rng=rng)
    w = rng.normal(size=(n, t))
    signal = masks @ w + 3.0
    margins = (signal[:, None, :] + noise * rng.normal(size=(m, reps, t))).astype(np.float32)
    status = np.zeros((m, reps), np.uint8)
    zeros = np.zeros((m, reps))
    store = Store(None, {}, masks, margins, status, zeros.astype(np.int64), zeros, zeros)
    return store, w, signal


def write_store_folder(folder: Path, x: np.ndarray, y: np.ndarray, status: np.ndarray | None = None) -> Path:
    """A fit store in the collect stage's format (every array of STORE_ARRAYS and a manifest),
    from masks x [m, n] and one replicate's margins y [m, T], without training anything."""
    m, n = x.shape
    t = y.shape[1]
    arrays = {
        "masks": pack(x.astype(bool)),
        "margins": y.astype(np.float32)[:, None, :],
        "status": np.zeros((m, 1), np.uint8) if status is None else status,
        "seeds": np.zeros((m, 1), np.int64),
        "acc_target": np.zeros((m, 1), np.float32),
        "acc_subset": np.zeros((m, 1), np.float32),
    }
    assert set(arrays) == {spec.name for spec in STORE_ARRAYS}
    meta = {}
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
        meta[name] = {"shape": list(arr.shape), "dtype": arr.dtype.name, "sha256": sha256_file(folder / f"{name}.npy")}
    manifest = {
        "format": STORE_FORMAT,
        "alpha": 0.5,
        "num_targets": t,
        "num_models": m,
        "num_train": n,
        "replicates": 1,
        "arrays": meta,
    }
    atomic_save_json(folder / "manifest.json", manifest)  # sealed, as collect writes it
    return folder
