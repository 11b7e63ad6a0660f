"""End to end with real snakemake: a tiny run, resume without retraining, growth, config errors."""

import numpy as np
import pytest
import yaml

from conftest import tiny_config

pytestmark = pytest.mark.workflow


def test_tiny_run_then_nothing_to_do_then_growth_trains_only_new_chunks(workflow):
    cfg = tiny_config(workflow.results)
    workflow.write_config(cfg)
    workflow.run()
    dm = np.load(workflow.results / "datamodels" / "0.5.npz")
    assert dm["weight"].shape == (100, 30) and dm["weight"].dtype == np.float32
    assert np.isfinite(dm["weight"]).all() and dm["target_ids"].shape == (30,)
    assert len(list((workflow.results / "fit" / "0.5").glob("block*.npz"))) == 2  # 30 targets, 16 per job
    trained = workflow.mtimes("results/train/**/*.npz")
    assert len(trained) == 3  # 2 fit chunks + 1 eval chunk

    again = workflow.run("--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr

    cfg["masks"]["fit_models"] = 120
    workflow.write_config(cfg)
    dry = workflow.run("--dry-run")
    text = dry.stdout + dry.stderr
    assert "train_chunk        1" in text.replace("\t", " ") or "train_chunk 1" in " ".join(text.split())
    workflow.run()
    after = workflow.mtimes("results/train/**/*.npz")
    assert {k: after[k] for k in trained} == trained  # nothing retrained
    assert len(after) == 4
    store = np.load(workflow.results / "store" / "0.5" / "fit" / "masks.npy", mmap_mode="r")
    assert store.shape == (120, 100)


def test_fit_settings_refit_without_retraining(workflow):
    cfg = tiny_config(workflow.results)
    workflow.write_config(cfg)
    workflow.run()
    trained = workflow.mtimes("results/train/**/*.npz")
    cfg["fit"]["num_lambdas"] = 5
    workflow.write_config(cfg)
    dry = " ".join((workflow.run("--dry-run").stdout).split())
    assert "fit_block 2" in dry and "train_chunk" not in dry
    workflow.run()
    assert workflow.mtimes("results/train/**/*.npz") == trained
    assert np.load(workflow.results / "datamodels" / "0.5.npz")["lams"].shape == (5, 30)


def test_every_stage_runs_from_the_shell_without_snakemake(tmp_path):
    import json
    import subprocess
    import sys

    from dmflow.config import validate_config

    cfg = validate_config(tiny_config(tmp_path))
    dm = [sys.executable, "-m", "dmflow"]

    def run(*args):
        subprocess.run([*dm, *args], check=True, capture_output=True, text=True)

    run("prepare-data", "--dataset", json.dumps(cfg["dataset"]), "--seed", "3", "--out", str(tmp_path / "data.npz"))
    run("make-masks", "--data", str(tmp_path / "data.npz"), "--alpha", "0.5", "--split", "fit", "--chunk", "0",
        "--chunk-size", "40", "--seed", "3", "--out", str(tmp_path / "m0.npy"))
    run("train-chunk", "--data", str(tmp_path / "data.npz"), "--masks", str(tmp_path / "m0.npy"), "--alpha", "0.5",
        "--split", "fit", "--chunk", "0", "--seed", "3", "--model", json.dumps(cfg["model"]),
        "--train", json.dumps(cfg["train"]), "--out", str(tmp_path / "t0.npz"))
    run("collect", "--data", str(tmp_path / "data.npz"), "--alpha", "0.5", "--split", "fit", "--seed", "3",
        "--chunk-size", "40", "--masks", str(tmp_path / "m0.npy"), "--trained", str(tmp_path / "t0.npz"),
        "--out-dir", str(tmp_path / "store"))
    run("fit-block", "--store", str(tmp_path / "store"), "--block", "0", "--targets-per-job", "30",
        "--fit", json.dumps(cfg["fit"]), "--seed", "3", "--out", str(tmp_path / "b0.npz"))
    run("merge-fit", "--data", str(tmp_path / "data.npz"), "--blocks", str(tmp_path / "b0.npz"), "--out", str(tmp_path / "dm.npz"))
    assert np.load(tmp_path / "dm.npz")["weight"].shape == (100, 30)


@pytest.mark.parametrize(
    "override,expected",
    [
        ({"masks.alphas": [1.2]}, "dmflow: config error: masks.alphas.0=1.2"),
        ({"masks.fit_models": 50}, "masks.fit_models=50 must be a positive multiple of masks.chunk_size=40"),
        ({"dataset": {"name": "npz", "path": "missing.npz"}}, "dataset.path=missing.npz: no such file"),
    ],
)
def test_bad_config_stops_snakemake_before_any_job(workflow, override, expected):
    workflow.write_config(tiny_config(workflow.results, **override))
    proc = workflow.run(check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "config error" in line]
    assert lines == [lines[0]] and expected in lines[0]
    assert not workflow.results.exists()
