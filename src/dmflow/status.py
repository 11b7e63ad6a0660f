"""``dmflow status``: what a results folder holds, running or finished, per stage.

It reads only the results layout (``dmflow.core.layout``: which files the config's jobs write),
the training records beside the chunks, and the jobs' logs; nothing of Snakemake's, so it works
while Snakemake runs, after it, and on a cluster run's shared folder. Per stage: the jobs done and
left, the work done (models, targets), the rate measured so far and an ETA; then the jobs that have
a log but no output yet (running, or failed), each with its last progress line
(``dmflow.core.progress``).

Rates are wall rates: the work of the finished jobs over the wall time they ran (each from the
first timestamp of its log to its output's time; parallel jobs counted once, pauses between runs
not at all). The ETA assumes the rest runs as fast.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dmflow.core.io import FileError
from dmflow.core.layout import Layout, alpha_dir, block_ids, block_targets, chunk_ids
from dmflow.core.progress import duration
from dmflow.data.sizing import dataset_sizes

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
"""The timestamp that starts a dmflow log line (``logging``'s ``asctime``, local time)."""

PROGRESS_LINE = re.compile(r"dmflow\.core\.progress: (.*)$")


@dataclass(frozen=True)
class Job:
    """One job of the plan: its output (done when it exists), its log, and its work in ``unit``."""

    output: str
    log: str
    work: float


@dataclass
class StageStatus:
    """The state of one stage: its jobs done and left, work done, rate and ETA."""

    name: str
    unit: str
    jobs: int
    done: int
    work_done: float
    work_total: float
    rate: float | None  # unit per wall-second, measured on the finished jobs
    started: list[tuple[str, str | None]] = field(default_factory=list)  # (log, its last progress line)

    @property
    def eta(self) -> float | None:
        if self.done == self.jobs:
            return 0.0
        return (self.work_total - self.work_done) / self.rate if self.rate else None

    def line(self) -> str:
        rate = f"{self.rate:.3g} {self.unit}/s" if self.rate else "-"
        eta = "done" if self.done == self.jobs else duration(self.eta) if self.eta is not None else "-"
        return (
            f"{self.name:<22} {self.done:>5}/{self.jobs:<5} {self.jobs - self.done:>5} "
            f"{self.work_done:>9.0f}/{self.work_total:<9.0f} {self.unit:<8} {rate:>16} {eta:>14}"
        )


HEADER = f"{'stage':<22} {'jobs done':>11} {'left':>5} {'work done/total':>19} {'unit':<8} {'rate':>16} {'ETA':>14}"


def log_start(path: str) -> float | None:
    """The time (epoch seconds) of a log's first timestamped line, None without one."""
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if match := LOG_TIME.match(line):
                    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except OSError:
        return None
    return None


def last_progress(path: str) -> str | None:
    """The last progress line of a log (``dmflow.core.progress``), None without one."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            tail = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if match := PROGRESS_LINE.search(line):
            return match.group(1)
    return None


def busy_seconds(intervals: Sequence[tuple[float, float]]) -> float:
    """The seconds covered by the union of some (start, end) intervals: the wall time jobs ran, parallel
    jobs once, and the pause between two Snakemake invocations not at all."""
    total, reach = 0.0, -float("inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def stage_status(name: str, unit: str, jobs: Sequence[Job]) -> StageStatus:
    """Count a stage's finished jobs (output present) and measure its wall rate (module docstring)."""
    finished = [j for j in jobs if os.path.exists(j.output)]
    work_done = float(sum(j.work for j in finished))
    timed = [(start, os.path.getmtime(j.output), j.work) for j in finished if (start := log_start(j.log)) is not None]
    span = busy_seconds([(a, b) for a, b, _ in timed])
    rate = sum(w for _, _, w in timed) / span if span > 0 else None
    started = [(j.log, last_progress(j.log)) for j in jobs if not os.path.exists(j.output) and os.path.exists(j.log)]
    return StageStatus(name, unit, len(jobs), len(finished), work_done, float(sum(j.work for j in jobs)), rate, started)


def _one(name: str, output: str, log: str) -> tuple[str, str, list[Job]]:
    """A stage of one job."""
    return name, "jobs", [Job(output, log, 1)]


def plan(config: dict[str, Any], results: str | os.PathLike | None = None) -> list[tuple[str, str, list[Job]]]:
    """The stages of a validated config's run as (name, unit, jobs), in the order they run.

    ``results`` replaces the config's results folder (the same run seen from another path).
    """
    layout = Layout(os.fspath(results) if results is not None else config["results"])
    masks, fit = config["masks"], config["fit"]
    _, num_targets = dataset_sizes(config["dataset"], config["seed"])
    blocks = block_ids(num_targets, fit["targets_per_job"])
    per_block = [len(block_targets(int(b), fit["targets_per_job"], num_targets)) for b in blocks]
    stages: list[tuple[str, str, list[Job]]] = []
    for alpha in (alpha_dir(a) for a in masks["alphas"]):
        for split, size, replicates in (
            ("fit", masks["chunk_size"], 1),
            ("eval", masks["eval_chunk_size"], masks["eval_replicates"]),
        ):
            chunks = chunk_ids(masks[f"{split}_models"], size)
            stages.append(
                (
                    f"train_chunk {alpha}/{split}",
                    "models",
                    [
                        Job(
                            layout.trained(alpha, split, c),
                            layout.log("train_chunk", alpha, split, c),
                            size * replicates,
                        )
                        for c in chunks
                    ],
                )
            )
        stages.append(
            (
                f"collect {alpha}",
                "stores",
                [Job(layout.manifest(alpha, s), layout.log("collect", alpha, s), 1) for s in ("fit", "eval")],
            )
        )
        stages.append(_one(f"moments {alpha}", layout.moments_manifest(alpha), layout.log("moments", alpha)))
        stages.append(
            (
                f"fit_block {alpha}",
                "targets",
                [
                    Job(layout.fit_block(alpha, b), layout.log("fit_block", alpha, f"block{b}"), t)
                    for b, t in zip(blocks, per_block)
                ],
            )
        )
        stages.append(_one(f"merge_fit {alpha}", layout.datamodels(alpha), layout.log("merge_fit", alpha)))
        stages.append(_one(f"evaluate {alpha}", layout.eval_summary(alpha), layout.log("evaluate", alpha)))
        if config["evaluate"]["learning_curve"]:
            stages.append(
                _one(f"learning_curve {alpha}", layout.curve_table(alpha), layout.log("learning_curve", alpha))
            )
    if config["baselines"]["enabled"]:
        stages.append(
            (
                "baseline_scores",
                "jobs",
                [
                    Job(layout.baseline_scores(m), layout.log("baseline_scores", m), 1)
                    for m in config["baselines"]["methods"]
                ],
            )
        )
    stages.append(("summary", "jobs", [Job(layout.summary(), layout.log("summary"), 1)]))
    return stages


def run_status(config: dict[str, Any], results: str | os.PathLike | None = None) -> list[StageStatus]:
    """Every stage's ``StageStatus`` for a validated config (``plan``)."""
    return [stage_status(name, unit, jobs) for name, unit, jobs in plan(config, results)]


def status_text(config: dict[str, Any], results: str | os.PathLike | None = None, *, now: float | None = None) -> str:
    """``dmflow status``' report: a table of the stages, the overall state, the started jobs.

    Raises
    ------
    FileError
        The results folder does not exist (one line).
    """
    folder = os.fspath(results) if results is not None else config["results"]
    if not os.path.isdir(folder):
        raise FileError(f"{folder}: no such results folder; give the run's results folder (its config's results:)")
    stages = run_status(config, results)
    stamp = datetime.fromtimestamp(time.time() if now is None else now).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"dmflow status of {folder} at {stamp}", "", HEADER, *(s.line() for s in stages), ""]
    jobs, done = sum(s.jobs for s in stages), sum(s.done for s in stages)
    lines.append(f"{done} of {jobs} jobs done, {jobs - done} left.")
    etas = [s.eta for s in stages if s.done < s.jobs]
    if etas and all(e is not None for e in etas):
        lines.append(f"ETA of the stages measured so far: {duration(sum(e for e in etas if e is not None))}.")
    elif etas:
        unmeasured = [s.name for s in stages if s.done < s.jobs and s.eta is None]
        measured = sum(e for e in etas if e is not None)
        lines.append(
            f"ETA: {duration(measured) if measured else '-'} for the stages measured so far; not measured yet: "
            + ", ".join(unmeasured)
            + "."
        )
    started = [(s.name, log, last) for s in stages for log, last in s.started]
    if started:
        lines += ["", "Started, no output yet (running, or failed: see the log):"]
        lines += [f"  {log}: {last or 'no progress line yet'}" for _, log, last in started]
    return "\n".join(lines) + "\n"
