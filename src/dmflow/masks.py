"""Stage make_masks: random fixed-size training subsets, one file per chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmflow.io import atomic_save_npy
from dmflow.seeds import chunk_seed_sequence


def subset_size(alpha: float, n: int) -> int:
    """Number of training examples in every subset: round(alpha * n)."""
    return int(round(alpha * n))


def draw_masks(n: int, alpha: float, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` boolean masks over ``n`` examples, each with exactly round(alpha*n) ones."""
    k = subset_size(alpha, n)
    if not 0 < k < n:
        raise ValueError(f"alpha={alpha} with n={n} gives subset size {k}; need 0 < size < n")
    chosen = np.argsort(rng.random((rows, n)), axis=1)[:, :k]
    masks = np.zeros((rows, n), dtype=bool)
    np.put_along_axis(masks, chosen, True, axis=1)
    return masks


def chunk_masks(n: int, alpha: float, split: str, chunk: int, chunk_size: int, seed: int) -> np.ndarray:
    """The masks of one chunk; depends only on (seed, alpha, split, chunk), never on the chunk count."""
    rng = np.random.default_rng(chunk_seed_sequence(seed, alpha, split, chunk))
    return draw_masks(n, alpha, chunk_size, rng)


def write_chunk_masks(
    out: Path, n: int, alpha: float, split: str, chunk: int, chunk_size: int, seed: int
) -> np.ndarray:
    """Draw one chunk of masks and write it atomically as a bool ``.npy``."""
    masks = chunk_masks(n, alpha, split, chunk, chunk_size, seed)
    atomic_save_npy(Path(out), masks)
    return masks
