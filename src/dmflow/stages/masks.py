"""Rule of ``rules/masks.smk``: ``make_masks`` draws one chunk of subset masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmflow.core.io import atomic_save_npy
from dmflow.store.masks import chunk_masks


def make_masks(
    data: Path, out: Path, *, alpha: float, split: str, chunk: int, chunk_size: int, seed: int
) -> np.ndarray:
    """Draw one chunk's masks (bool [chunk_size, n], n from ``data.npz``) and write them atomically as ``.npy``."""
    with np.load(data, allow_pickle=False) as f:
        n = f["y_train"].shape[0]
    masks = chunk_masks(n, alpha, split, chunk=chunk, chunk_size=chunk_size, seed=seed)
    atomic_save_npy(Path(out), masks)
    return masks
