"""Shared fixtures: tiny datasets, tiny configs, and a real snakemake runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data() -> dict[str, np.ndarray]:
    """The digits data as the workflow prepares it, with 120 training examples and 40 targets."""
    from dmflow.data import prepare_data

    return prepare_data({"name": "digits", "num_train": 120, "num_targets": 40, "standardize": True}, seed=0)


def tiny_config(results: Path, **overrides) -> dict:
    """A config that trains a few dozen small models in seconds."""
    cfg = {
        "results": str(results),
        "seed": 3,
        "dataset": {"name": "digits", "num_train": 100, "num_targets": 30},
        "masks": {"alphas": [0.5], "chunk_size": 40, "fit_models": 80, "eval_chunk_size": 10, "eval_models": 10, "eval_replicates": 2},
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

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "2", *args],
            cwd=self.root, env=env, capture_output=True, text=True, timeout=900,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def planned_jobs(self) -> dict[str, int]:
        """Job counts per rule of a dry run (the 'Job stats' table)."""
        text = self.run("--dry-run").stdout
        if "Nothing to be done" in text:
            return {}
        table = text.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
        return {name: int(count) for name, count in (line.split() for line in table) if name != "total"}

    def mtimes(self, pattern: str) -> dict[str, int]:
        return {str(p.relative_to(self.root)): p.stat().st_mtime_ns for p in sorted(self.root.glob(pattern))}


@pytest.fixture()
def workflow(tmp_path: Path) -> Workflow:
    return Workflow(tmp_path)
