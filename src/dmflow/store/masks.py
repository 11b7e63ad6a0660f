"""Random fixed-size training subsets, drawn per chunk from the chunk's own seed."""

from __future__ import annotations

import numpy as np

from dmflow.core.seeds import chunk_seed_sequence


def subset_size(alpha: float, n: int) -> int:
    """Number of training examples in every subset: round(alpha * n)."""
    return int(round(alpha * n))


def draw_masks(n: int, alpha: float, rows: int, *, rng: np.random.Generator) -> np.ndarray:
    """bool [rows, n]: masks over ``n`` examples, each with exactly round(alpha*n) ones."""
    k = subset_size(alpha, n)
    if not 0 < k < n:
        raise ValueError(f"alpha={alpha} with n={n} gives subset size {k}; need 0 < size < n")
    chosen = np.argsort(rng.random((rows, n)), axis=1)[:, :k]
    masks = np.zeros((rows, n), dtype=bool)
    np.put_along_axis(masks, chosen, True, axis=1)
    return masks


def chunk_masks(n: int, alpha: float, split: str, *, chunk: int, chunk_size: int, seed: int) -> np.ndarray:
    """bool [chunk_size, n]: one chunk's masks; they depend on (seed, alpha, split, chunk) only, never on
    the number of chunks."""
    rng = np.random.default_rng(chunk_seed_sequence(seed, alpha, split, chunk=chunk))
    return draw_masks(n, alpha, chunk_size, rng=rng)
