"""Deterministic seeds: every random draw derives from (seed, alpha, split, chunk, ...).

Keeping all randomness keyed this way is what lets a run grow (more chunks, more
alphas) without changing anything that was already computed.
"""

from __future__ import annotations

import numpy as np

SPLITS: dict[str, int] = {"fit": 0, "eval": 1, "counterfactual": 2}
"""The mask splits (the lasso's data, held-out masks, counterfactual retrainings) and
their stable integer ids, part of every seed."""

FIT_REPLICATES = 1
"""Models trained per mask of the fit split (the eval and counterfactual splits' come from the config)."""

PURPOSE_VALIDATION_ROWS = 101
"""Seed key for choosing the validation rows of the fit split."""


def alpha_key(alpha: float) -> int:
    """An integer key for alpha (micro-units), so seeds never depend on float repr."""
    return int(round(float(alpha) * 1_000_000))


def chunk_seed_sequence(seed: int, alpha: float, split: str, *, chunk: int) -> np.random.SeedSequence:
    """The seed sequence of one chunk of one split at one alpha."""
    return np.random.SeedSequence((int(seed), alpha_key(alpha), SPLITS[split], int(chunk)))


def model_seed(seed: int, alpha: float, split: str, *, chunk: int, row: int, replicate: int) -> int:
    """The 63-bit seed of one model: (seed, alpha, split, chunk, row, replicate)."""
    ss = np.random.SeedSequence((int(seed), alpha_key(alpha), SPLITS[split], int(chunk), int(row), int(replicate)))
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def chunk_seeds(seed: int, alpha: float, split: str, *, chunk: int, rows: int, replicates: int) -> np.ndarray:
    """Model seeds of a chunk, int64 [rows, replicates]."""
    return np.array(
        [
            [model_seed(seed, alpha, split, chunk=chunk, row=r, replicate=rep) for rep in range(replicates)]
            for r in range(rows)
        ],
        dtype=np.int64,
    )


PURPOSE_BASELINE_MODELS = 102
"""Seed key of the full-data models that the baselines (TRAK) train."""


def baseline_seeds(seed: int, models: int) -> np.ndarray:
    """int64 [models]: the seeds of the baselines' full-data models, from (seed, PURPOSE_BASELINE_MODELS, i)."""
    return np.array(
        [
            int(np.random.SeedSequence((int(seed), PURPOSE_BASELINE_MODELS, i)).generate_state(1, dtype=np.uint64)[0])
            & ((1 << 63) - 1)
            for i in range(int(models))
        ],
        dtype=np.int64,
    )
