"""A training job killed mid-chunk (a SLURM time limit, a preemption) resumes after its last finished stack and
writes the chunk an uninterrupted job writes, byte for byte; and a training job's time limit follows its chunk."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dmflow.core.io import atomic_save_json, atomic_save_npz, load_json
from dmflow.core.layout import STARTUP_SECONDS, Layout, seconds_path, stack_path, stacks_dir, train_runtime_minutes
from dmflow.core.schema import load_schema
from dmflow.stages.masks import make_masks
from dmflow.stages.train import resume_key, train_chunk
from dmflow.store.formats import measured_seconds_per_model
from dmflow.training.settings import TrainSettings
from dmflow.training.train import plan_stacks

from helpers import Workflow, read_npz, tiny_config

MODEL = {"arch": "mlp", "hidden": [16]}
TRAIN = {"epochs": 20, "batch_size": 20, "stack_size": 10, "lr": 0.01, "device": "cpu"}


@pytest.fixture()
def chunk_inputs(tmp_path, tiny_data):
    """data.npz and one chunk of 40 masks: 4 stacks of 10 MLPs."""
    np.savez(tmp_path / "data.npz", **tiny_data)
    make_masks(tmp_path / "data.npz", tmp_path / "00000.npy", alpha=0.5, split="fit", chunk=0, chunk_size=40, seed=0)
    return tmp_path / "data.npz", tmp_path / "00000.npy"


def _train_command(data: Path, masks: Path, out: Path, train: dict = TRAIN) -> list[str]:
    return [
        *(sys.executable, "-m", "dmflow", "train-chunk", "--data", data, "--masks", masks, "--alpha", "0.5"),
        *("--split", "fit", "--chunk", "0", "--seed", "0", "--threads", "1", "--out", out),
        *("--model", json.dumps(MODEL), "--train", json.dumps(train)),
    ]


def test_a_training_job_killed_mid_chunk_resumes_and_writes_the_uninterrupted_chunk(chunk_inputs, tmp_path):
    data, masks = chunk_inputs
    ref, out = tmp_path / "ref" / "00000.npz", tmp_path / "run" / "00000.npz"
    # the uninterrupted run, side by side with the one that is killed (threads are fixed, so load changes nothing)
    ref_proc = subprocess.Popen(list(map(str, _train_command(data, masks, ref))), stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(list(map(str, _train_command(data, masks, out))), stderr=subprocess.DEVNULL)
    first = Path(stack_path(out, 0))
    deadline = time.time() + 300
    while time.time() < deadline and not first.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # as SLURM ends a job at its time limit (SIGTERM, then SIGKILL)
    proc.wait()
    assert first.exists() and not out.exists(), "the kill should land after the first stack, before the chunk"
    saved = sorted(p.name for p in Path(stacks_dir(out)).iterdir() if not p.name.startswith("."))
    assert 1 <= len(saved) <= 3  # of 4 stacks (the last one is never saved: it is the chunk)

    rerun = subprocess.run(list(map(str, _train_command(data, masks, out))), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(saved)} of 4 stacks ({10 * len(saved)} models) were trained before" in rerun.stderr
    assert rerun.stderr.count("resumed 10 models") == len(saved)
    assert rerun.stderr.count("trained 10 models") == 4 - len(saved)
    _, ref_err = ref_proc.communicate(timeout=600)
    assert ref_proc.returncode == 0, ref_err[-3000:]
    assert out.read_bytes() == ref.read_bytes()  # margins, accuracies, seeds, status: byte-identical
    assert not os.path.lexists(stacks_dir(out)) and not os.path.lexists(stacks_dir(ref))  # removed once written
    record = load_json(Path(seconds_path(out)))
    assert record["models"] == 40 and record["resumed_models"] == 10 * len(saved)
    assert record["train_seconds"] > 0


def _settings(**train) -> TrainSettings:
    return TrainSettings.from_config(MODEL, {**TRAIN, "epochs": 2, **train})


def _stage(data, masks, out, settings):
    return train_chunk(data, masks, out, seed=0, alpha=0.5, split="fit", chunk=0, replicates=1, settings=settings)


def test_a_saved_stack_that_matches_is_used_not_trained_again(chunk_inputs, tmp_path):
    data, masks = chunk_inputs
    settings = _settings()
    ref = _stage(data, masks, tmp_path / "ref.npz", settings)
    out = tmp_path / "out.npz"
    stacks = plan_stacks(np.load(masks), 1, settings.stack_size)
    idx = stacks[1]
    key = resume_key(data, masks, settings, device="cpu", precision="32-true")
    marked = {
        "margins": np.full((10, 40), 7.0, dtype=np.float32),  # not what training gives: proves the file was used
        "acc_target": np.zeros(10, dtype=np.float32),
        "acc_subset": np.zeros(10, dtype=np.float32),
        "finite": np.ones(10, dtype=bool),
    }
    seeds = ref["seeds"].reshape(-1)[idx]
    atomic_save_npz(
        Path(stack_path(out, 1)), {**marked, "key": np.array(key), "idx": idx, "seeds": seeds, "seconds": np.float64(5)}
    )
    got = _stage(data, masks, out, settings)
    rows = np.zeros(40, dtype=bool)
    rows[idx] = True
    assert np.all(got["margins"][rows] == 7.0)
    np.testing.assert_array_equal(got["margins"][~rows], ref["margins"][~rows])
    assert load_json(Path(seconds_path(out)))["resumed_models"] == 10
    assert load_json(Path(seconds_path(out)))["train_seconds"] >= 5
    assert not os.path.lexists(stacks_dir(out))


@pytest.mark.parametrize("stale", ["other settings", "other masks", "other stack size", "truncated", "stray file"])
def test_a_saved_stack_from_other_inputs_or_damaged_is_removed_and_trained_again(chunk_inputs, tmp_path, caplog, stale):
    data, masks = chunk_inputs
    settings = _settings()
    ref = _stage(data, masks, tmp_path / "ref.npz", settings)
    out = tmp_path / "out.npz"
    idx = plan_stacks(np.load(masks), 1, 10)[0]
    key_settings, key_masks = (_settings(lr=0.02), masks) if stale == "other settings" else (settings, masks)
    if stale == "other masks":
        make_masks(data, tmp_path / "other.npy", alpha=0.5, split="fit", chunk=1, chunk_size=40, seed=0)
        key_masks = tmp_path / "other.npy"
    if stale == "other stack size":
        idx = np.arange(20)
    arrays = {
        "margins": np.full((len(idx), 40), 7.0, dtype=np.float32),
        "acc_target": np.zeros(len(idx), dtype=np.float32),
        "acc_subset": np.zeros(len(idx), dtype=np.float32),
        "finite": np.ones(len(idx), dtype=bool),
        "key": np.array(resume_key(data, key_masks, key_settings, device="cpu", precision="32-true")),
        "idx": idx,
        "seeds": ref["seeds"].reshape(-1)[idx],
        "seconds": np.float64(1),
    }
    path = Path(stack_path(out, 0))
    atomic_save_npz(path, arrays)
    if stale == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    if stale == "stray file":
        path.unlink()
        path = path.with_name("notes.txt")
        path.write_text("x")
    with caplog.at_level(logging.WARNING, logger="dmflow.stages.train"):
        got = _stage(data, masks, out, settings)
    assert f"not resuming from {path}" in caplog.text
    assert read_npz(out).keys() == ref.keys()
    for name, array in ref.items():
        np.testing.assert_array_equal(got[name], array)
    assert not os.path.lexists(stacks_dir(out))


def test_plan_stacks_groups_models_by_subset_size_in_stacks_of_at_most_k():
    masks = np.zeros((5, 8), dtype=bool)
    masks[[0, 2, 4], :4] = True
    masks[[1, 3], :2] = True
    stacks = plan_stacks(masks, 2, 4)  # flat models 0..9: row r, replicate j is 2 r + j
    assert [s.tolist() for s in stacks] == [[2, 3, 6, 7], [0, 1, 4, 5], [8, 9]]


def test_a_training_jobs_runtime_is_its_models_times_seconds_per_model_with_a_margin():
    assert train_runtime_minutes(500, 30.0, margin=1.5) == -(-(STARTUP_SECONDS + 500 * 30) * 1.5 // 60)
    assert train_runtime_minutes(500, 30.0, margin=1.5, attempt=3) == 3 * train_runtime_minutes(500, 30.0, margin=1.5)
    assert train_runtime_minutes(1, 0.001, margin=1.0) >= 1
    with pytest.raises(ValueError, match="seconds_per_model"):
        train_runtime_minutes(10, 0.0, margin=1.5)
    # the schema's description states the formula with this constant
    description = " ".join(
        load_schema()["properties"]["train"]["properties"]["seconds_per_model"]["description"].split()
    )
    assert f"ceil(({STARTUP_SECONDS} + models x seconds_per_model) x runtime_margin / 60)" in description


def test_seconds_per_model_is_measured_from_the_slowest_trained_chunk_of_the_results_folder(tmp_path):
    layout = Layout(str(tmp_path / "results"))
    assert measured_seconds_per_model(layout) is None  # nothing trained yet
    for split, chunk, seconds, models in [
        ("fit", "00000", 40.0, 400),
        ("fit", "00001", 60.0, 400),
        ("eval", "00000", 9.0, 100),
    ]:
        path = Path(layout.trained_seconds("0.5", split, chunk))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_json(path, {"train_seconds": seconds, "models": models})
    Path(layout.trained_seconds("0.5", "fit", "00002")).write_text("{not json")  # unreadable: ignored
    assert measured_seconds_per_model(layout) == pytest.approx(0.15)


def _train_jobs(workflow: Workflow, cfg: dict) -> dict[str, tuple[str, str]]:
    """(gpu, runtime) of the fit and eval training jobs of chunk 00000, from a real dry run."""
    workflow.write_config(cfg)
    text = workflow.run("--dry-run", "results/train/0.5/fit/00000.npz", "results/train/0.5/eval/00000.npz").stdout
    jobs = {}
    for block in re.split(r"^(?:local)?rule ", text, flags=re.M)[1:]:
        if block.startswith("train_chunk:"):
            lines = dict(line.strip().split(": ", 1) for line in block.splitlines()[1:] if ": " in line)
            split = dict(w.split("=") for w in lines["wildcards"].split(", "))["split"]
            resources = dict(r.split("=", 1) for r in lines["resources"].split(", "))
            jobs[split] = (resources["gpu"], resources["runtime"])
    return jobs


@pytest.mark.workflow
def test_training_jobs_ask_for_a_gpu_and_a_runtime_from_their_models(tmp_path):
    wf = Workflow(tmp_path)
    cfg = tiny_config("results")
    # 40 fit models, 10 eval masks x 2 replicates: ceil((120 + models x seconds) x 1.5 / 60) minutes.
    # (device: cuda asks for a GPU too; the config refuses it where torch sees none, as here: clusters use auto)
    cfg["train"].update(device="auto", request_gpu=True, seconds_per_model=2.0)
    assert _train_jobs(wf, cfg) == {"fit": ("1", "5"), "eval": ("1", "4")}
    # no GPU for cpu; seconds_per_model null, nothing trained yet: train.unmeasured_seconds_per_model (1 s)
    cfg["train"].update(device="cpu", seconds_per_model=None)
    assert _train_jobs(wf, cfg) == {"fit": ("0", "4"), "eval": ("0", "4")}
    # measured: the slowest chunk this results folder trained (3 s a model); auto without request_gpu: no GPU
    seconds = wf.results / "train" / "0.5" / "counterfactual" / "00000.seconds.json"
    seconds.parent.mkdir(parents=True)
    atomic_save_json(seconds, {"train_seconds": 30.0, "models": 10})
    cfg["train"].update(device="auto", request_gpu=False)
    assert _train_jobs(wf, cfg) == {"fit": ("0", "6"), "eval": ("0", "5")}
