"""Targets in groups whose whole lambda paths run side by side, one Python thread each."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

R = TypeVar("R")

MIN_GROUP_WORK = 2e8
"""Below this many targets x features^2 per group, two groups side by side were no faster than one: the groups'
Python bookkeeping takes turns on the interpreter lock (benchmarks/RESULTS.md, "Earlier figures",
``lasso_solvers.py``: target groups)."""


def group_count(num_targets: int, num_features: int, threads: int) -> int:
    """How many target groups ``fit_targets`` runs side by side: one per thread, each of at least ``MIN_GROUP_WORK``."""
    return max(1, min(threads, int(num_targets * num_features**2 // MIN_GROUP_WORK)))


def over_target_groups(fn: Callable[[slice], R], num_targets: int, workers: int) -> list[R]:
    """``fn`` on ``workers`` contiguous groups of the targets at once, one Python thread each, torch on one thread.

    Targets are independent, so each group can run its whole lambda path alone. Within
    one solve the matrix product keeps every thread busy, but the fused kernel and the
    bookkeeping between products run on one; whole groups side by side keep every core
    busy all the time (benchmarks/lasso_solvers.py times both).
    """
    edges = np.linspace(0, num_targets, max(1, min(workers, num_targets)) + 1).round().astype(int)
    groups = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    if len(groups) == 1:
        return [fn(groups[0])]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(groups)) as pool:
            return list(pool.map(fn, groups))
    finally:
        torch.set_num_threads(before)
