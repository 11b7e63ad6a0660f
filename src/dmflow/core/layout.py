"""Where every output of a run lives, and how its work is cut into jobs.

A ``Layout`` is built from the config's ``results`` folder. The rules, the notebook
API and ``summary.md`` all ask it for paths, so each path is written once here.
Methods return strings, so that rules can pass wildcards:
``layout.datamodels("{alpha}")`` is ``results/datamodels/{alpha}.npz``.

Work units: a split's masks are trained in chunks (``chunk_ids``), and the targets
are fitted in blocks (``block_targets``); the rules plan jobs with the same functions
that the stages use to find their share.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def alpha_dir(alpha: float | str) -> str:
    """The folder name of an alpha, its shortest decimal without an exponent (``0.5`` -> ``"0.5"``,
    ``6e-05`` -> ``"0.00006"``), which the rules' alpha wildcard accepts."""
    return np.format_float_positional(float(alpha), trim="-")


def chunk_ids(num_models: int, chunk_size: int) -> list[str]:
    """File stems of a split's chunks: ``00000``, ``00001``, ..."""
    return [f"{i:05d}" for i in range(num_models // chunk_size)]


def num_blocks(num_targets: int, targets_per_job: int) -> int:
    """How many fit jobs cover ``num_targets`` targets."""
    return -(-num_targets // targets_per_job)


def block_ids(num_targets: int, targets_per_job: int) -> list[str]:
    """File stems of the fit blocks: ``0000``, ``0001``, ..."""
    return [f"{b:04d}" for b in range(num_blocks(num_targets, targets_per_job))]


def block_targets(block: int, targets_per_job: int, num_targets: int) -> np.ndarray:
    """int64 [<= targets_per_job]: the target indices of one fit block."""
    start = block * targets_per_job
    if start >= num_targets:
        raise ValueError(f"block {block} is past the last target ({num_targets} targets, {targets_per_job} per job)")
    return np.arange(start, min(start + targets_per_job, num_targets))


STARTUP_SECONDS = 120
"""What a training job spends besides training, allowed for in its time limit: importing torch and Lightning,
loading the data, hashing the inputs, starting CUDA."""


def train_runtime_minutes(models: int, seconds_per_model: float, *, margin: float, attempt: int = 1) -> int:
    """A training job's time limit in minutes (Snakemake's ``runtime``, sbatch ``-t``):
    ``ceil((STARTUP_SECONDS + models x seconds_per_model) x margin / 60) x attempt``.

    A retry (``attempt`` 2, 3) gets twice, three times as long; it also resumes after the stacks the killed
    try finished, so it needs less.

    Raises
    ------
    ValueError
        ``seconds_per_model`` not positive, or ``margin`` below 1.
    """
    if not seconds_per_model > 0:
        raise ValueError(f"train.seconds_per_model={seconds_per_model!r}: must be a number of seconds above 0")
    if not margin >= 1:
        raise ValueError(f"train.runtime_margin={margin!r}: must be at least 1")
    return math.ceil((STARTUP_SECONDS + models * seconds_per_model) * margin / 60) * max(1, int(attempt))


def seconds_path(trained: str | os.PathLike) -> str:
    """The record of a trained chunk's training time, beside it: ``{chunk}.npz`` -> ``{chunk}.seconds.json``.

    Kept out of the chunk file, whose bytes depend on the config alone (a rerun writes the same file).
    """
    path = os.fspath(trained)
    return (path[: -len(".npz")] if path.endswith(".npz") else path) + ".seconds.json"


def stacks_dir(trained: str | os.PathLike) -> str:
    """The folder of a chunk's finished stacks while it trains, beside it: ``{chunk}.npz`` -> ``{chunk}.stacks``.

    A killed or timed-out training job resumes from the stacks saved there; the job removes the folder once
    the chunk file is written. Not a rule output (Snakemake never deletes it on failure).
    """
    path = os.fspath(trained)
    return (path[: -len(".npz")] if path.endswith(".npz") else path) + ".stacks"


def stack_path(trained: str | os.PathLike, stack: int) -> str:
    """One finished stack of a training chunk: ``{chunk}.stacks/{stack:05d}.npz`` (``stacks_dir``)."""
    return f"{stacks_dir(trained)}/{int(stack):05d}.npz"


METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A scored attribution method's name, which names its files: 1-64 letters, digits, ``_``, ``-``, ``.``,
starting with a letter or a digit (no path separators, no hidden files, no ``..``)."""


def method_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a scored method's files (None: it can)."""
    if not isinstance(name, str) or not METHOD_NAME.fullmatch(name) or ".." in name:
        return (
            f"method name {name!r} is not a safe file name: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or a digit"
        )
    return None


@dataclass(frozen=True)
class Layout:
    """Every path of one results folder (see the README's *Outputs* table)."""

    results: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", os.path.normpath(os.fspath(self.results)))

    def _path(self, *parts: str) -> str:
        """``results/part/...``; with ``results: .`` the paths are plain relative ones (no ``./``)."""
        return "/".join(parts if self.results == "." else (self.results, *parts))

    def relative(self, path: str) -> str:
        """A path of this layout relative to the results folder (links in summary.md)."""
        return os.path.relpath(path, self.results)

    # inputs of every alpha
    def data(self) -> str:
        return self._path("data.npz")

    # training: chunk files, then the store of each (alpha, split)
    def masks(self, alpha: str, split: str, chunk: str) -> str:
        return self._path("masks", alpha, split, f"{chunk}.npy")

    def trained(self, alpha: str, split: str, chunk: str) -> str:
        return self._path("train", alpha, split, f"{chunk}.npz")

    def trained_seconds(self, alpha: str, split: str, chunk: str) -> str:
        return seconds_path(self.trained(alpha, split, chunk))

    def store(self, alpha: str, split: str) -> str:
        return self._path("store", alpha, split)

    def store_array(self, alpha: str, split: str, name: str) -> str:
        return self._path("store", alpha, split, f"{name}.npy")

    def manifest(self, alpha: str, split: str) -> str:
        return self._path("store", alpha, split, "manifest.json")

    # fitting: the fit store's moments (once per alpha), then one file per block of targets
    def moments(self, alpha: str) -> str:
        return self._path("moments", alpha)

    def moments_array(self, alpha: str, name: str) -> str:
        return self._path("moments", alpha, f"{name}.npy")

    def moments_manifest(self, alpha: str) -> str:
        return self._path("moments", alpha, "manifest.json")

    def fit_block(self, alpha: str, block: str) -> str:
        return self._path("fit", alpha, f"block{block}.npz")

    def datamodels(self, alpha: str) -> str:
        return self._path("datamodels", f"{alpha}.npz")

    # evaluation
    def eval_table(self, alpha: str) -> str:
        return self._path("evaluation", alpha, "targets.parquet")

    def eval_summary(self, alpha: str) -> str:
        return self._path("evaluation", alpha, "summary.json")

    def eval_figure(self, alpha: str) -> str:
        return self._path("evaluation", alpha, "predicted_vs_actual.png")

    def curve_table(self, alpha: str) -> str:
        return self._path("evaluation", alpha, "learning_curve.csv")

    def curve_figure(self, alpha: str) -> str:
        return self._path("evaluation", alpha, "learning_curve.png")

    # any attribution method scored on the eval store (``dmflow score-attribution``), by its name
    def method_table(self, alpha: str, name: str) -> str:
        return self._path("evaluation", alpha, "methods", f"{_method(name)}.csv")

    def method_summary(self, alpha: str, name: str) -> str:
        return self._path("evaluation", alpha, "methods", f"{_method(name)}.json")

    # baselines (``baselines`` config section): each method's scores [n, T], once per run, and its record
    def baseline_scores(self, method: str) -> str:
        return self._path("baselines", f"{method}.npy")

    def baseline_info(self, method: str) -> str:
        return self._path("baselines", f"{method}.json")

    # a baseline's curve over its model count (TRAK's ``trak_models`` list): float32 [P, n, T], the scores
    # of every point but the largest (whose are ``baseline_scores``); P = 0 for a method of one point
    def baseline_curve(self, method: str) -> str:
        return self._path("baselines", f"{method}.curve.npy")

    # every method side by side: datamodels (with their learning curve) and the baselines
    def compare_table(self, alpha: str) -> str:
        return self._path("evaluation", alpha, "compare.csv")

    def compare_figure(self, alpha: str) -> str:
        return self._path("evaluation", alpha, "compare.png")

    # counterfactuals: one chunk of masks (split "counterfactual"), trained like any chunk
    def cf_masks(self, alpha: str) -> str:
        return self.masks(alpha, "counterfactual", "00000")

    def cf_trained(self, alpha: str) -> str:
        return self.trained(alpha, "counterfactual", "00000")

    def cf_cases(self, alpha: str) -> str:
        return self._path("counterfactual", alpha, "cases.csv")

    def cf_changes(self, alpha: str) -> str:
        return self._path("counterfactual", alpha, "changes.csv")

    def cf_flips(self, alpha: str) -> str:
        return self._path("counterfactual", alpha, "flips.csv")

    def cf_brittleness(self, alpha: str) -> str:
        return self._path("counterfactual", alpha, "brittleness.csv")

    def cf_summary(self, alpha: str) -> str:
        return self._path("counterfactual", alpha, "summary.json")

    def cf_figure(self, alpha: str) -> str:
        return self._path("counterfactual", alpha, "counterfactual.png")

    def cf_brittleness_figure(self, alpha: str) -> str:
        return self._path("counterfactual", alpha, "brittleness.png")

    # analyses
    def influencers_table(self, alpha: str) -> str:
        return self._path("analysis", alpha, "influencers.parquet")

    def influencers_figure(self, alpha: str) -> str:
        return self._path("analysis", alpha, "influencers.png")

    def leakage_table(self, alpha: str) -> str:
        return self._path("analysis", alpha, "leakage.csv")

    def leakage_figure(self, alpha: str) -> str:
        return self._path("analysis", alpha, "leakage.png")

    def embeddings_table(self, alpha: str) -> str:
        return self._path("analysis", alpha, "embeddings.csv")

    def embeddings_figure(self, alpha: str) -> str:
        return self._path("analysis", alpha, "embeddings.png")

    def ends_table(self, alpha: str) -> str:
        return self._path("analysis", alpha, "component_ends.csv")

    def ends_figure(self, alpha: str) -> str:
        return self._path("analysis", alpha, "component_ends.png")

    # the run
    def summary(self) -> str:
        return self._path("summary.md")

    def log(self, rule: str, *wildcards: str) -> str:
        """One job's log: ``logs/<rule>/<wildcards...>.log``."""
        *folders, last = (rule, *wildcards) if wildcards else ("", rule)
        return self._path("logs", *[f for f in folders if f], f"{last}.log")

    def benchmark(self, rule: str, *wildcards: str) -> str:
        """One job's usage record (``dmflow --usage``, a tsv in the columns of Snakemake's ``benchmark:``
        files: ``s``, ``max_rss`` MB, ``cpu_time``): ``benchmarks/<rule>/<wildcards...>.tsv``."""
        *folders, last = (rule, *wildcards) if wildcards else ("", rule)
        return self._path("benchmarks", *[f for f in folders if f], f"{last}.tsv")

    def benchmarks(self) -> str:
        """The folder of every job's benchmark record."""
        return self._path("benchmarks")


def baseline_point_name(method: str, models: int, *, largest: bool) -> str:
    """The name a baseline's curve point of ``models`` models is scored under (``method_table``):
    the method's own name for its largest point, ``{method}-k{models}`` for the others."""
    return method if largest else f"{method}-k{int(models)}"


def baseline_point_names(method: str, counts: Sequence[int]) -> list[str]:
    """The names of a baseline's curve points, ascending (``counts``: ``trak_counts`` for TRAK, ``[0]`` for a
    method that trains nothing): the files ``compare_methods`` scores them into (``method_table``)."""
    return [baseline_point_name(method, k, largest=i == len(counts) - 1) for i, k in enumerate(counts)]


def _method(name: str) -> str:
    problem = method_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name
