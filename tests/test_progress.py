"""Progress a person can watch, ``dmflow status``, provenance in every manifest, and the heavy rules'
benchmarks: unit specifications, then one tiny real Snakemake run stopped half way and then finished."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmflow.config import load_config
from dmflow.core import progress as prog
from dmflow.core import provenance
from dmflow.core.io import atomic_save_json, load_json
from dmflow.core.layout import Layout
from dmflow.status import busy_seconds, run_status

from helpers import Workflow, dmflow_cli, read_npz, tiny_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_at_most_every_interval_with_done_total_rate_and_eta(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="dmflow.core.progress")
    p = prog.Progress("train_chunk 0.5/fit/00003", 100, "models", every=30, clock=clock)
    assert caplog.messages == ["train_chunk 0.5/fit/00003: 0/100 models (0%), - models/s, ETA unknown"]
    clock.now += 10
    assert p.update(20) is None  # 10 s after the last line: none
    clock.now += 20
    line = p.update(40)  # 30 s after it: one, 40 models in 30 s
    assert line == "train_chunk 0.5/fit/00003: 40/100 models (40%), 1.33 models/s, ETA 45 s"
    clock.now += 29.9
    assert p.advance(10) is None
    clock.now += 0.1
    assert p.advance(10) == "train_chunk 0.5/fit/00003: 60/100 models (60%), 1 models/s, ETA 40 s"
    clock.now += 40
    assert p.finish() == "train_chunk 0.5/fit/00003: done, 100 models in 1 min 40 s (1 models/s)"
    assert len(caplog.messages) == 4


def test_progress_interval_comes_from_the_environment_and_refuses_nonsense(monkeypatch):
    monkeypatch.delenv(prog.ENV, raising=False)
    assert prog.interval() == prog.EVERY == 30
    monkeypatch.setenv(prog.ENV, "2.5")
    assert prog.interval() == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv(prog.ENV, bad)
        with pytest.raises(prog.ProgressError, match=rf"{prog.ENV}='{bad}': give a positive number of seconds"):
            prog.interval()
    proc = dmflow_cli("config-docs", check=False, env={**os.environ, prog.ENV: "soon"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"dmflow config-docs: {prog.ENV}='soon'")


def test_duration_reads_as_a_person_says_it():
    assert [prog.duration(s) for s in (0, 42.4, 185, 7800, float("nan"))] == [
        "0 s",
        "42 s",
        "3 min 5 s",
        "2 h 10 min",
        "unknown",
    ]


def test_busy_seconds_counts_parallel_jobs_once_and_pauses_not_at_all():
    assert busy_seconds([]) == 0
    assert busy_seconds([(0, 10), (5, 12), (2, 3)]) == 12  # overlapping: 0..12
    assert busy_seconds([(0, 10), (1000, 1010)]) == 20  # two runs, a pause between


def test_provenance_has_every_field_and_a_rerun_with_other_versions_says_so_in_one_line(caplog):
    block = provenance.provenance()
    assert set(block) == {*provenance.COMPARED, "device", "kernels"}
    assert block["torch"] and block["numpy"] == np.__version__ and block["python"]
    assert block["snakemake"]  # installed, read from its metadata: the package never imports it
    assert block["device"] == "cpu" and block["cpu"]
    assert json.loads(json.dumps(block)) == block
    assert provenance.note_changes(block, [("the store", {"provenance": block})]) is None
    older = {**block, "torch": "1.0.0", "kernels": {"gram": "int8"}}
    now = {**block, "kernels": {"gram": "float32", "train": "float32"}}
    caplog.set_level(logging.WARNING, logger="dmflow.core.provenance")
    line = provenance.note_changes(now, [("the store s", {"provenance": older}), ("old", {})], subject="moments")
    assert line == (
        f"provenance: moments ran with other versions than the store s: torch 1.0.0 -> {block['torch']}, "
        "kernels.gram int8 -> float32 (nothing is refused)"
    )
    assert caplog.messages == [line]
    as_member = provenance.as_array(older)
    assert as_member.dtype.kind == "U" and provenance.read({"provenance": as_member}) == older


def _progress_times(log: Path) -> list[tuple[datetime, str]]:
    out = []
    for line in log.read_text().splitlines():
        if " dmflow.core.progress" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append((stamp, line))
    return out


def _status(config: Path) -> dict[str, tuple[int, int, float]]:
    return {s.name: (s.done, s.jobs, s.work_done) for s in run_status(load_config(config))}


INTERVAL = 0.02  # far below one tiny chunk's training (0.3 s on a quiet machine), so several lines must come
SLACK = 10.0  # seconds a line may come late: Lightning's set-up, one batch, the margins after the last batch


@pytest.mark.workflow
def test_tiny_run_progress_status_provenance_and_benchmarks(workflow: Workflow, monkeypatch):
    monkeypatch.setenv(prog.ENV, str(INTERVAL))
    cfg = tiny_config(
        workflow.results,
        **{"train.epochs": 30, "evaluate": {"learning_curve": []}, "counterfactual": {"enabled": False}},
    )
    config = workflow.write_config(cfg)
    layout = Layout(workflow.results)

    # half way: the fit store only
    first = workflow.run(layout.manifest("0.5", "fit"))
    status = _status(config)
    assert status["train_chunk 0.5/fit"] == (2, 2, 80)
    assert status["train_chunk 0.5/eval"] == (0, 1, 0)
    assert status["collect 0.5"] == (1, 2, 1)
    assert status["moments 0.5"] == (0, 1, 0)
    assert status["fit_block 0.5"] == (0, 2, 0)  # 30 targets, 16 per job
    assert status["summary"] == (0, 1, 0)
    fit_training = next(s for s in run_status(load_config(config)) if s.name == "train_chunk 0.5/fit")
    assert fit_training.rate and fit_training.rate > 0 and fit_training.eta == 0
    shown = dmflow_cli("status", workflow.results, "--config", config).stdout
    assert re.search(r"^train_chunk 0\.5/fit\s+2/2\s+0\s+80/80\s+models\s+\S+ models/s\s+done$", shown, re.M), shown
    assert re.search(r"^train_chunk 0\.5/eval\s+0/1\s+1\s+0/20\s+models", shown, re.M), shown
    assert "jobs done" in shown and "left." in shown
    missing = dmflow_cli("status", workflow.root / "nowhere", "--config", config, check=False)
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f"dmflow status: {workflow.root / 'nowhere'}: no such results folder; give the run's results folder (its config's results:)"
    )

    # progress: in each training log from start to done, at most INTERVAL (+ SLACK) apart, rate and ETA
    for chunk in ("00000", "00001"):
        lines = _progress_times(Path(layout.log("train_chunk", "0.5", "fit", chunk)))
        assert lines[0][1].endswith(f"train_chunk 0.5/fit/{chunk}: 0/40 models (0%), - models/s, ETA unknown")
        assert re.search(rf"train_chunk 0\.5/fit/{chunk}: done, 40 models in \d+ s \(\S+ models/s\)$", lines[-1][1])
        middle = lines[1:-1]
        assert len(middle) >= 2, lines
        assert all(re.search(r": [\d.]+/40 models \(\d+%\), [\d.e+-]+ models/s, ETA \d+", line) for _, line in middle)
        gaps = [(b - a).total_seconds() for (a, _), (b, _) in zip(lines, lines[1:])]
        assert max(gaps) <= INTERVAL + SLACK, gaps
        # the console (Snakemake's stdout) shows one line per finished job
        assert re.search(rf"dmflow: train_chunk 0\.5/fit/{chunk}: done, 40 models in", first.stdout), first.stdout[
            -3000:
        ]

    # the store records its provenance, the training's device and kernels, and the seconds per model
    store = load_json(Path(layout.manifest("0.5", "fit")))
    assert store["provenance"]["device"] == "cpu" and store["provenance"]["torch"]
    assert store["train_seconds_per_model"] == pytest.approx(store["train_seconds"] / 80)
    record = load_json(Path(layout.trained_seconds("0.5", "fit", "00000")))
    assert record["provenance"]["torch"] == store["provenance"]["torch"]

    # a rerun of the moments over a store made with another torch: one line says so, nothing is refused
    manifest_path = Path(layout.manifest("0.5", "fit"))
    atomic_save_json(manifest_path, {**store, "provenance": {**store["provenance"], "torch": "1.0.0"}})
    proc = dmflow_cli(
        "moments", "--store", layout.store("0.5", "fit"), "--val-fraction", "0.1", "--out-dir", workflow.root / "m"
    )
    said = [line for line in proc.stderr.splitlines() if "provenance:" in line]
    assert len(said) == 1 and f"torch 1.0.0 -> {store['provenance']['torch']}" in said[0], proc.stderr
    assert load_json(workflow.root / "m" / "manifest.json")["provenance"]["torch"] == store["provenance"]["torch"]
    atomic_save_json(manifest_path, store)

    # the rest: every manifest has its provenance, the heavy rules their benchmarks, summary.md both
    workflow.run()
    status = _status(config)
    assert all(done == jobs for done, jobs, _ in status.values()), status
    blocks = {
        "store eval": load_json(Path(layout.manifest("0.5", "eval")))["provenance"],
        "moments": load_json(Path(layout.moments_manifest("0.5")))["provenance"],
        "fit block": provenance.read(read_npz(Path(layout.fit_block("0.5", "0000")))),
        "datamodels": provenance.read(read_npz(Path(layout.datamodels("0.5")))),
        "evaluation": load_json(Path(layout.eval_summary("0.5")))["provenance"],
    }
    for name, block in blocks.items():
        assert block is not None and set(block) == {*provenance.COMPARED, "device", "kernels"}, name
    assert blocks["moments"]["kernels"]  # the moments chose their Gram and cross kernels
    for rule, wildcards in (
        ("train_chunk", ("0.5", "fit", "00000")),
        ("moments", ("0.5",)),
        ("fit_block", ("0.5", "block0000")),
        ("evaluate", ("0.5",)),
    ):
        usage = pd.read_csv(layout.benchmark(rule, *wildcards), sep="\t")  # dmflow --usage, not a rule output
        assert list(usage.columns) == ["s", "max_rss", "cpu_time"] and len(usage) == 1, rule
        assert usage.s[0] > 0 and usage.max_rss[0] > 50 and usage.cpu_time[0] > 0, rule
    summary = Path(layout.summary()).read_text()
    assert "## Provenance" in summary and f"| torch | {blocks['evaluation']['torch']} |" in summary
    assert re.search(r"^\| train_chunk \| 3 \| [\d.]+ \| \d+ \| 2000 \| \d+% \|$", summary, re.M), summary
    assert "Training seconds per model" in summary


def test_merge_fit_keeps_the_fits_provenance_and_says_when_the_blocks_differ(tmp_path, caplog):
    from dmflow.core.io import atomic_save_npz
    from dmflow.stages.fit import merge_fit
    from dmflow.store import formats

    block = provenance.provenance()
    paths = []
    for b, (targets, torch_version) in enumerate(((np.arange(0, 2), block["torch"]), (np.arange(2, 3), "1.0.0"))):
        t = len(targets)
        arrays = {
            spec.name: np.zeros(spec.shape(n=3, targets=t, lambdas=2), spec.dtype) for spec in formats.FIT_BLOCK_ARRAYS
        }
        arrays.update(targets=targets, num_targets=np.int64(3), format=np.int64(formats.FIT_BLOCK_FORMAT))
        arrays["provenance"] = provenance.as_array({**block, "torch": torch_version})
        paths.append(tmp_path / f"block{b}.npz")
        atomic_save_npz(paths[-1], arrays)
    caplog.set_level(logging.WARNING, logger="dmflow.core.provenance")
    merged = merge_fit(list(reversed(paths)), None, tmp_path / "dm.npz")
    assert provenance.read(merged) == block  # the first block's (targets 0..1)
    assert provenance.read(read_npz(tmp_path / "dm.npz")) == block
    assert caplog.messages == [
        "provenance: the first fit block ran with other versions than the fit block of target 2: "
        f"torch 1.0.0 -> {block['torch']} (nothing is refused)"
    ]
