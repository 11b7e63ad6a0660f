"""End to end with real snakemake: a tiny run, resume without retraining, growth, config errors."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, tiny_config

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
    assert len(trained) == 4  # 2 fit chunks + 1 eval chunk + 1 counterfactual chunk

    table = pd.read_parquet(workflow.results / "evaluation" / "0.5" / "targets.parquet")
    assert len(table) == 30 and list(table.target_id) == list(dm["target_ids"])
    assert np.isfinite(table[["mse_single", "mse_mean", "ceiling_mean"]].to_numpy()).all()
    # a correlation is undefined only where the datamodel predicts a constant (all weights zero)
    nonzero = table[table.nnz > 0]
    assert len(nonzero) > 10 and np.isfinite(nonzero[["lds_single", "lds_mean", "pearson_mean"]].to_numpy()).all()
    summary = json.loads((workflow.results / "evaluation" / "0.5" / "summary.json").read_text())
    assert summary["counts"] == {"targets": 30, "targets_scored": summary["counts"]["targets_scored"],
                                 "eval_masks": 10, "replicates": 2, "diverged_models_excluded": 0}
    curve = pd.read_csv(workflow.results / "evaluation" / "0.5" / "learning_curve.csv")
    assert list(curve.num_models) == [40, 80] and np.isfinite(curve.lds_mean).all()
    changes = pd.read_csv(workflow.results / "counterfactual" / "0.5" / "changes.csv")
    assert len(changes) == 4 * 2 * 2 and np.isfinite(changes.actual_change).all()
    cf = json.loads((workflow.results / "counterfactual" / "0.5" / "summary.json").read_text())
    assert cf["replicates"] == 2 and cf["ks"] == [2, 5]
    for png in ("evaluation/0.5/predicted_vs_actual.png", "evaluation/0.5/learning_curve.png",
                "counterfactual/0.5/counterfactual.png", "counterfactual/0.5/brittleness.png"):
        assert (workflow.results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary_md = (workflow.results / "summary.md").read_text()
    assert "LDS (Spearman)" in summary_md and "Counterfactual retraining" in summary_md
    influencers = pd.read_parquet(workflow.results / "analysis" / "0.5" / "influencers.parquet")
    assert set(influencers.direction) <= {"helps", "harms"} and (
        np.sign(influencers.weight) == np.where(influencers.direction == "helps", 1, -1)).all()
    figures = sorted(p.name for p in workflow.results.glob("**/*.png"))
    assert len(figures) == 8
    workflow.run("--report", "report.html")
    html = (workflow.root / "report.html").read_text()
    for name in figures + ["summary.md", "leakage.csv", "learning_curve.csv", "flips.csv"]:
        assert name in html, name

    assert workflow.planned_jobs() == {}  # a second run has nothing to do

    cfg["masks"]["fit_models"] = 120
    workflow.write_config(cfg)
    # one new fit chunk, and the counterfactual chunk, which follows the (changed) datamodels
    assert workflow.planned_jobs()["train_chunk"] == 2
    workflow.run()
    after = workflow.mtimes("results/train/**/*.npz")
    kept = {k: v for k, v in trained.items() if "counterfactual" not in k}
    assert {k: after[k] for k in kept} == kept  # nothing retrained
    assert len(after) == 5
    store = np.load(workflow.results / "store" / "0.5" / "fit" / "masks.npy", mmap_mode="r")
    assert store.shape == (120, 100)


def test_fit_settings_refit_without_retraining(workflow):
    cfg = tiny_config(workflow.results)
    workflow.write_config(cfg)
    workflow.run()
    trained = workflow.mtimes("results/train/**/*.npz")
    cfg["fit"]["num_lambdas"] = 5
    workflow.write_config(cfg)
    planned = workflow.planned_jobs()
    assert planned["fit_block"] == 2 and planned["train_chunk"] == 1  # only the counterfactual chunk
    workflow.run()
    # the counterfactual chunk follows the datamodels; fit and eval models are not retrained
    assert {k: v for k, v in workflow.mtimes("results/train/**/*.npz").items() if "counterfactual" not in k} == {
        k: v for k, v in trained.items() if "counterfactual" not in k}
    assert np.load(workflow.results / "datamodels" / "0.5.npz")["lams"].shape == (5, 30)
    fitted = workflow.mtimes("results/fit/**/*.npz")

    cfg["evaluate"]["learning_curve"] = [0.25, 1.0]
    workflow.write_config(cfg)
    assert workflow.planned_jobs() == {"learning_curve": 1, "summary": 1, "all": 1}
    workflow.run()
    assert workflow.mtimes("results/fit/**/*.npz") == fitted


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


def _shell_json_params(dry_run_output: str) -> dict[str, dict]:
    """The JSON params (--dataset/--model/--train/--fit '{...}') of every shell command a dry run prints."""
    import re

    found = {}
    for flag, text in re.findall(r"--(dataset|model|train|fit) '(\{.*?\})'", dry_run_output):
        found.setdefault(flag, json.loads(text))
    return found


def test_a_user_config_file_does_not_inherit_the_shipped_config_yaml(workflow):
    """--configfile replaces config.yaml: what the workflow runs equals `dmflow check-config` of the user's file."""
    import subprocess
    import sys

    import yaml

    (workflow.root / "config.yaml").write_text((REPO / "config.yaml").read_text())  # the shipped default sits beside it
    user = workflow.root / "my.yaml"
    user.write_text(yaml.safe_dump({"results": str(workflow.results)}))  # every other key omitted
    proc = workflow.run("--configfile", str(user), "--dry-run", "--printshellcmds")
    used = _shell_json_params(proc.stdout)
    checked = json.loads(subprocess.run([sys.executable, "-m", "dmflow", "check-config", str(user)],
                                        capture_output=True, text=True, check=True).stdout)
    assert set(used) == {"dataset", "model", "train", "fit"}
    for section, params in used.items():
        assert params == {k: v for k, v in checked[section].items() if k in params}, section
    assert used["dataset"]["num_train"] is None  # config.yaml's 1000 did not leak in
