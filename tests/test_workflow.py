"""End to end with real snakemake: one tiny run read by focused tests, then what a user changes
(more models, other fit settings, their own config file), and bad configs."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dmflow.core import tables as tables_
from dmflow.core.layout import Layout
from dmflow.store.formats import STORE_NAMES, open_store

from helpers import REPO, Workflow, dmflow_cli, tiny_config

pytestmark = pytest.mark.workflow

UMASK = 0o022


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Workflow:
    """The tiny config run once, under umask 022, with a relative results folder (so the run can be copied),
    with the baselines (TRAK over 1 and 2 models)."""
    run = Workflow(tmp_path_factory.mktemp("tiny"))
    run.write_config(tiny_config("results", baselines={"enabled": True, "trak_models": [1, 2]}))
    old = os.umask(UMASK)
    try:
        run.run()
    finally:
        os.umask(old)
    return run


def copy_of(run: Workflow, tmp_path) -> Workflow:
    """A copy of a finished run (files, mtimes and Snakemake's records), to change without touching the original."""
    shutil.copytree(run.root, tmp_path / "copy", symlinks=True)
    copy = Workflow.__new__(Workflow)
    copy.root, copy.results = tmp_path / "copy", tmp_path / "copy" / "results"
    return copy


def test_datamodels_have_one_column_per_target_and_one_file_per_block(tiny_run):
    layout = Layout(str(tiny_run.results))
    dm = np.load(layout.datamodels("0.5"))
    assert dm["weight"].shape == (100, 30) and dm["weight"].dtype == np.float32
    assert np.isfinite(dm["weight"]).all() and dm["target_ids"].shape == (30,)
    assert len(list((tiny_run.results / "fit" / "0.5").glob("block*.npz"))) == 2  # 30 targets, 16 per job
    assert len(tiny_run.mtimes("results/train/**/*.npz")) == 4  # 2 fit chunks + 1 eval chunk + 1 counterfactual chunk
    assert sorted(p.stem for p in (tiny_run.results / "store" / "0.5" / "fit").glob("*.npy")) == sorted(STORE_NAMES)


def test_evaluation_scores_every_target_against_the_held_out_masks(tiny_run):
    layout = Layout(str(tiny_run.results))
    dm = np.load(layout.datamodels("0.5"))
    table = pd.read_parquet(layout.eval_table("0.5"))
    assert len(table) == 30 and list(table.target_id) == list(dm["target_ids"])
    assert np.isfinite(table[["mse_single", "mse_mean", "ceiling_mean"]].to_numpy()).all()
    # a correlation is undefined only where the datamodel predicts a constant (all weights zero)
    nonzero = table[table.nnz > 0]
    assert len(nonzero) > 10 and np.isfinite(nonzero[["lds_single", "lds_mean", "pearson_mean"]].to_numpy()).all()
    summary = json.loads(open(layout.eval_summary("0.5")).read())
    assert summary["counts"] == {
        "targets": 30,
        "targets_scored": summary["counts"]["targets_scored"],
        "targets_constant_predictions": int((table.nnz == 0).sum()),  # their LDS is undefined, not zero
        "eval_masks": 10,
        "replicates": 2,
        "diverged_models_excluded": 0,
    }


def test_learning_curve_and_counterfactuals_are_measured(tiny_run):
    layout = Layout(str(tiny_run.results))
    curve = pd.read_csv(layout.curve_table("0.5"))
    assert list(curve.num_models) == [40, 80] and np.isfinite(curve.lds_mean).all()
    curve_log = Path(layout.log("learning_curve", "0.5")).read_text()  # one refit (80 models are the datamodels)
    assert re.search(r"learning_curve 0\.5: done, 30 targets in \d+ s", curve_log), curve_log[-500:]
    changes = pd.read_csv(layout.cf_changes("0.5"))
    assert len(changes) == 4 * 2 * 2 and np.isfinite(changes.actual_change).all()
    cf = json.loads(open(layout.cf_summary("0.5")).read())
    assert cf["replicates"] == 2 and cf["ks"] == [2, 5]


def test_analyses_summary_and_figures(tiny_run):
    layout = Layout(str(tiny_run.results))
    summary_md = open(layout.summary()).read()
    assert "LDS (Spearman)" in summary_md and "Counterfactual retraining" in summary_md
    assert "| trak | 1 |" in summary_md and "| trak | 2 |" in summary_md and "Datamodels vs baselines" in summary_md
    assert "At equal compute" in summary_md
    for link in re.findall(r"\]\(([^)]+)\)", summary_md):
        assert (tiny_run.results / link).is_file(), link  # every link of summary.md resolves
    influencers = pd.read_parquet(layout.influencers_table("0.5"))
    assert (
        set(influencers.direction) <= {"helps", "harms"}
        and (np.sign(influencers.weight) == np.where(influencers.direction == "helps", 1, -1)).all()
    )
    figures = sorted(tiny_run.results.glob("**/*.png"))
    assert len(figures) == 9 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figures)


def test_baselines_are_scored_beside_the_datamodels_by_compute(tiny_run):
    layout = Layout(str(tiny_run.results))
    table = pd.read_csv(layout.compare_table("0.5"))
    assert list(table.method) == ["datamodels (40 models)", "datamodels", "trak", "trak", "input_similarity"]
    assert list(table.models_trained) == [40, 80, 1, 2, 0]
    assert table.seconds[2] < table.seconds[3]  # TRAK's curve: the first model's share, then both
    assert np.isfinite(table[["seconds", "lds_single", "lds_mean"]].to_numpy()).all() and (table.seconds > 0).all()
    fit = json.loads(open(layout.manifest("0.5", "fit")).read())
    assert table.seconds[1] == pytest.approx(fit["train_seconds"]) and table.seconds[0] == pytest.approx(
        fit["train_seconds"] / 2
    )
    trak = json.loads(open(layout.baseline_info("trak")).read())
    assert trak["proj_dim"] == 16 and trak["projector"] == "BasicProjector"  # auto: n = 100 -> 16
    assert [p["name"] for p in trak["points"]] == ["trak-k1", "trak"]
    assert np.load(layout.baseline_curve("trak")).shape == (1, 100, 30)
    for name, row in (("trak-k1", 2), ("trak", 3), ("input_similarity", 4)):
        scored = json.loads(open(layout.method_summary("0.5", name)).read())
        assert scored["method"]["name"] == name and scored["lds_mean"]["mean"] == table.lds_mean[row]
        assert len(pd.read_csv(layout.method_table("0.5", name))) == 30


def test_the_report_holds_every_figure_and_table(tiny_run):
    tiny_run.run("--report", "report.html")
    html = (tiny_run.root / "report.html").read_text()
    for name in [p.name for p in tiny_run.results.glob("**/*.png")] + [
        "summary.md",
        "leakage.csv",
        "learning_curve.csv",
        "flips.csv",
        "compare.csv",
    ]:
        assert name in html, name


def test_every_table_of_a_run_has_its_declared_columns(tiny_run):
    """Each results table is written as ``dmflow.core.tables`` declares it, and reads back through its reader."""
    layout, alpha = Layout(str(tiny_run.results)), "0.5"
    declared = {
        layout.eval_table(alpha): tables_.DATAMODEL_SCORES,
        layout.method_table(alpha, "trak"): tables_.ATTRIBUTION_SCORES,
        layout.curve_table(alpha): tables_.LEARNING_CURVE,
        layout.compare_table(alpha): tables_.COMPARE,
        layout.cf_cases(alpha): tables_.CF_CASES,
        layout.cf_changes(alpha): tables_.CF_CHANGES,
        layout.cf_flips(alpha): tables_.CF_FLIPS,
        layout.cf_brittleness(alpha): tables_.BRITTLENESS,
        layout.influencers_table(alpha): tables_.INFLUENCERS,
        layout.leakage_table(alpha): tables_.LEAKAGE,
        layout.embeddings_table(alpha): tables_.EMBEDDINGS,
        layout.ends_table(alpha): tables_.COMPONENT_ENDS,
    }
    for path, spec in declared.items():
        frame = spec.read(path)
        assert len(frame) > 0, path
        assert list(frame.columns) == [c.name for c in spec.expected(list(frame.columns))], path
    embedded = tables_.EMBEDDINGS.read(layout.embeddings_table(alpha))
    assert "pc1" in embedded and "pc2" in embedded  # the numbered columns, as many as the config asked for
    usage = sorted(Path(layout.benchmarks()).rglob("*.tsv"))
    assert usage and all(list(tables_.USAGE.read(tsv).columns) == tables_.USAGE.names for tsv in usage)


def test_every_output_is_readable_by_collaborators(tiny_run):
    """Under umask 022 every file of the run is 0644, as a plain open() would make it (not mkstemp's 0600)."""
    modes = {
        str(p.relative_to(tiny_run.results)): p.stat().st_mode & 0o777
        for p in tiny_run.results.rglob("*")
        if p.is_file()
    }
    assert len(modes) > 40 and set(modes.values()) == {0o666 & ~UMASK}, {k: oct(v) for k, v in modes.items()}


def test_a_second_run_has_nothing_to_do(tiny_run):
    assert tiny_run.planned_jobs() == {}


def test_more_models_train_only_the_new_chunks(tiny_run, tmp_path):
    run = copy_of(tiny_run, tmp_path)
    trained = run.mtimes("results/train/**/*.npz")
    cfg = tiny_config("results", **{"masks.fit_models": 120})
    run.write_config(cfg)
    # one new fit chunk, and the counterfactual chunk, which follows the (changed) datamodels
    assert run.planned_jobs()["train_chunk"] == 2
    run.run("results/store/0.5/fit/manifest.json")  # the store of all 120 models; what follows is as before
    after = run.mtimes("results/train/**/*.npz")
    assert {k: after[k] for k in trained} == trained  # nothing retrained
    assert len(after) == len(trained) + 1
    assert open_store(run.results / "store" / "0.5" / "fit").masks.shape == (120, 100)


def test_fit_settings_refit_without_retraining(tiny_run, tmp_path):
    run = copy_of(tiny_run, tmp_path)
    trained = {k: v for k, v in run.mtimes("results/train/**/*.npz").items() if "counterfactual" not in k}
    cfg = tiny_config("results")
    cfg["fit"]["num_lambdas"] = 5
    run.write_config(cfg)
    planned = run.planned_jobs()
    assert planned["fit_block"] == 2 and planned["train_chunk"] == 1  # only the counterfactual chunk
    datamodels, curve = "results/datamodels/0.5.npz", "results/evaluation/0.5/learning_curve.csv"
    run.run(datamodels, curve)  # (the counterfactual chunk follows the datamodels; not run here)
    # fit and eval models are not retrained
    assert {k: v for k, v in run.mtimes("results/train/**/*.npz").items() if "counterfactual" not in k} == trained
    assert np.load(run.results / "datamodels" / "0.5.npz")["lams"].shape == (5, 30)
    fitted = run.mtimes("results/fit/**/*.npz")
    cfg["evaluate"]["learning_curve"] = [0.25, 1.0]
    run.write_config(cfg)
    assert run.planned_jobs(datamodels, curve) == {"learning_curve": 1}
    run.run(curve)
    assert run.mtimes("results/fit/**/*.npz") == fitted


@pytest.mark.parametrize("lost", ["store", "fit block"])
def test_a_failed_rerun_that_lost_a_store_or_a_fit_block_is_noticed_by_the_next_run(tiny_run, tmp_path, lost):
    """Snakemake deletes a failed job's outputs; the next run must rebuild them, not say "Nothing to be done"."""
    run = copy_of(tiny_run, tmp_path)
    datamodels = "results/datamodels/0.5.npz"  # what the lost file feeds; the rest follows from it as usual
    if lost == "store":  # a chunk damaged on disk: collect reruns and fails on it
        chunk = run.results / "train" / "0.5" / "fit" / "00001.npz"
        good = chunk.read_bytes()
        chunk.write_bytes(good[:500])
        failed = run.run(datamodels, check=False)
        assert failed.returncode != 0 and not (run.results / "store" / "0.5" / "fit").exists()
        chunk.write_bytes(good)  # the user restores the chunk
        assert run.planned_jobs()["collect"] == 1
    else:  # a fit job that failed on its rerun
        (run.results / "fit" / "0.5" / "block0001.npz").unlink()
        assert run.planned_jobs()["fit_block"] == 1
    run.run(datamodels)
    assert run.planned_jobs(datamodels) == {}
    assert (run.results / "store" / "0.5" / "fit" / "manifest.json").is_file()


def test_every_stage_runs_from_the_shell_without_snakemake(tmp_path):
    from dmflow.config import validate_config

    cfg = validate_config(tiny_config(tmp_path))
    d = tmp_path
    dmflow_cli("prepare-data", "--dataset", json.dumps(cfg["dataset"]), "--seed", "3", "--out", d / "data.npz")
    dmflow_cli(
        "make-masks",
        "--data",
        d / "data.npz",
        "--alpha",
        "0.5",
        "--split",
        "fit",
        "--chunk",
        "0",
        "--chunk-size",
        "40",
        "--seed",
        "3",
        "--out",
        d / "m0.npy",
    )
    dmflow_cli(
        "train-chunk",
        "--data",
        d / "data.npz",
        "--masks",
        d / "m0.npy",
        "--alpha",
        "0.5",
        "--split",
        "fit",
        "--chunk",
        "0",
        "--seed",
        "3",
        "--model",
        json.dumps(cfg["model"]),
        "--train",
        json.dumps(cfg["train"]),
        "--out",
        d / "t0.npz",
    )
    dmflow_cli(
        "collect",
        "--data",
        d / "data.npz",
        "--alpha",
        "0.5",
        "--split",
        "fit",
        "--seed",
        "3",
        "--chunk-size",
        "40",
        "--masks",
        d / "m0.npy",
        "--trained",
        d / "t0.npz",
        "--out-dir",
        d / "store",
    )
    dmflow_cli(
        "moments",
        "--store",
        d / "store",
        "--val-fraction",
        str(cfg["fit"]["val_fraction"]),
        "--seed",
        "3",
        "--out-dir",
        d / "moments",
    )
    dmflow_cli(
        "fit-block",
        "--moments",
        d / "moments",
        "--store-manifest",
        d / "store" / "manifest.json",
        "--block",
        "0",
        "--targets-per-job",
        "30",
        "--fit",
        json.dumps(cfg["fit"]),
        "--out",
        d / "b0.npz",
    )
    dmflow_cli("merge-fit", "--data", d / "data.npz", "--blocks", d / "b0.npz", "--out", d / "dm.npz")
    assert np.load(d / "dm.npz")["weight"].shape == (100, 30)


def _shell_json_params(dry_run_output: str) -> dict[str, dict]:
    """The JSON params (--dataset/--model/--train/--fit '{...}') of the shell commands a dry run prints."""
    found = {}
    for flag, text in re.findall(r"--(dataset|model|train|fit) '(\{.*?\})'", dry_run_output):
        found.setdefault(flag, json.loads(text))
    return found


def test_a_user_config_file_does_not_inherit_the_shipped_config_yaml(workflow):
    """--configfile replaces config.yaml: what the workflow runs equals `dmflow check-config` of the user's file."""
    (workflow.root / "config.yaml").write_text((REPO / "config.yaml").read_text())  # the shipped default beside it
    user = workflow.root / "my.yaml"
    user.write_text(yaml.safe_dump({"results": str(workflow.results)}))  # every other key omitted
    proc = workflow.run("--configfile", str(user), "--dry-run", "--printshellcmds")
    used = _shell_json_params(proc.stdout)
    checked = yaml.safe_load(dmflow_cli("check-config", user).stdout)
    assert set(used) == {"dataset", "model", "train", "fit"}
    for section, params in used.items():
        assert params == {k: v for k, v in checked[section].items() if k in params}, section
    assert used["dataset"]["num_train"] is None  # config.yaml's 1000 did not leak in


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
