"""Memory budgets of the heavy jobs, beside the buffer sizes they read: light (numpy-free), so the
rules size ``resources.mem_mb`` at parse time without importing torch or the solvers.

The buffer sizes are defined here only: the moments accumulation (``dmflow.lasso.accumulate``) and
the fit's working sets (``dmflow.lasso.working_sets``, ``dmflow.lasso.stored_gram``) import them, so a
budget and the buffer it counts cannot drift apart (``tests/test_architecture.py``).
"""

from __future__ import annotations

import os

from dmflow.core.errors import StoreError

PROCESS_MB = 1024
"""A job's memory besides its arrays (the interpreter with torch, numpy and scipy loaded), in the rules' mem_mb."""

GRAM_COLS = 1024
"""Columns of X^T X per int8 product (``dmflow.lasso.accumulate``): its int32 result is [n, GRAM_COLS], not a
second [n, n]; narrow enough that the upper block triangle is little more than half of the matrix."""
CROSS_TARGETS = 1024
"""Targets per int8 cross product: its int32 sums are [4 x 1024, n], not [4 T, n]."""
BUCKET_BYTES = 128 * 2**20
"""Memory of one batch of padded per-target Grams (``dmflow.lasso.working_sets``: targets are solved in batches of
similar working-set size)."""
UNION_BYTES = 512 * 2**20
"""Up to this size G[U, U] (U: the union of a solve's working sets) is read once and the Grams gathered from it."""
CD_BUFFER_ENTRIES = 2**24
"""float32 entries of the copies G[A_t, A_t] that coordinate descent holds at once (64 MB), for a batch of targets
whose Gram rows are read once for all of them; a set beyond 4096 features reads its Gram rows in place."""
DENSE_MAX_N = 5000
"""Up to this many features the fit solves on the dense centred Gram (the reference path), where it was the
faster (benchmarks/RESULTS.md, "The lasso package's figures")."""
CURVE_TARGETS_PER_PASS = 1000
"""Targets the learning curve refits at a time (``dmflow.evaluation.learning_curve``); its job is sized for them."""


def moments_bytes(n: int, num_targets: int, *, block_rows: int = 8192) -> int:
    """Peak memory of the moments job: two Grams and two cross moments in float32, one int32 product of
    ``GRAM_COLS`` columns, the int32 sums of an int8 cross product [4 x ``CROSS_TARGETS``, n], and one row
    block (packed, unpacked, its int8 and float32 copies, its margins and their int8 digits)."""
    products = 4 * n * min(n, GRAM_COLS) + 16 * n * min(num_targets, CROSS_TARGETS)
    return 2 * 4 * (n * n + n * num_targets) + products + block_rows * (7 * n + n // 8 + 24 * num_targets)


def fit_bytes(n: int, targets_per_job: int, *, threads: int = 1, device: str = "cpu") -> int:
    """Peak memory of a fit job at most. Up to ``DENSE_MAX_N`` features the dense reference path runs:
    float64 centred Grams of the fit, validation and all rows and float32 copies (~32 n^2 bytes). Beyond,
    the working sets: both memory-mapped Grams, had every feature joined a working set (8 n^2; the fit rows'
    also serves their dense solves), a float32 centred Gram of all rows once some target's refit working set
    passes the dense share of the features (4 n^2), and per target group (up to one per thread) a target's
    G[A, A] for coordinate descent (``CD_BUFFER_ENTRIES``, on the CPU) or, on another ``device`` (or ``auto``:
    either), G[U, U] of its working sets' union and one bucket of padded Grams. Plus the targets' O(n x
    targets) arrays (cross moments, weights, products, path statistics)."""
    if n <= DENSE_MAX_N:
        return 32 * n * n + 96 * n * targets_per_job
    per_group = 8 * CD_BUFFER_ENTRIES
    if device != "cpu":
        per_group = max(per_group, UNION_BYTES + 2 * BUCKET_BYTES)
    return 12 * n * n + max(1, threads) * per_group + 96 * n * targets_per_job


def check_memory(needed: int, mem_mb: int | None, what: str) -> None:
    """Refuse, in one line and before any work, a job that needs more memory than it was given."""
    given = []
    if mem_mb:
        given.append((mem_mb * 2**20, f"the {mem_mb} MB this job was given (resources.mem_mb)"))
    try:
        given.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"))
    except (ValueError, OSError):  # pragma: no cover - no sysconf
        pass
    for limit, name in given:
        if needed > limit:
            raise StoreError(
                f"{what} need ~{needed / 2**30:.1f} GB, more than {name}; give the job more memory, "
                "or run it where there is more"
            )
