"""Random fixed-size training subsets, drawn per chunk from the chunk's own seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmflow.core.io import FileError
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


DRAWN_SPLITS = ("fit", "eval")  # masks drawn by ``chunk_masks``; the counterfactual split's are designed


def check_chunk_masks(
    masks: np.ndarray, path: Path, n: int, *, alpha: float, split: str, chunk: int, seed: int
) -> None:
    """Raise ``FileError`` (one line) unless ``masks`` (read from ``path``) are bool [rows, n] and, for a
    split of ``DRAWN_SPLITS``, the chunk's draw (``chunk_masks`` with as many rows): a masks file carries
    no checksum, but a drawn one is a pure function of the seed, so drawing it again proves it before any
    model trains on a flipped bit or an edit. (Counterfactual masks are designed from the datamodels:
    only their type and shape are checked here.)"""
    rows = masks.shape[0] if masks.ndim == 2 else 0
    if masks.dtype != np.bool_ or masks.ndim != 2 or masks.shape[1] != n or rows == 0:
        raise FileError(
            f"{path}: masks {masks.dtype}{list(masks.shape)} are not bool [rows, {n}]; delete it and rerun (make_masks)"
        )
    if split not in DRAWN_SPLITS:
        return
    expected = chunk_masks(n, alpha, split, chunk=chunk, chunk_size=rows, seed=seed)
    if not np.array_equal(masks, expected):
        bad = int(np.flatnonzero((masks != expected).any(axis=1))[0])
        raise FileError(
            f"{path}: row {bad} is not what seed {seed} draws for chunk {chunk} of split {split!r} "
            "(corrupt or edited); delete it and rerun (make_masks)"
        )


def pack(masks: np.ndarray) -> np.ndarray:
    """uint8 [rows, ceil(n/8)]: bool masks [rows, n] at one bit per entry (``np.packbits`` along n)."""
    return np.packbits(masks, axis=-1)


class PackedMasks:
    """A read-only bool [m, n] view of bit-packed masks uint8 [m, ceil(n/8)] (a memmap of the store).

    Indexing unpacks only the rows asked for (``masks[rows]`` -> bool [len(rows), n],
    ``masks[i]`` -> bool [n], ``masks[rows, cols]`` indexes the unpacked rows), so row
    blocks stream from disk at an eighth of a byte per entry; ``np.asarray(masks)``
    unpacks all of them.
    """

    dtype = np.dtype(np.bool_)
    ndim = 2

    def __init__(self, packed: np.ndarray, n: int) -> None:
        if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] != -(-n // 8):
            raise ValueError(
                f"packed masks must be uint8 [m, {-(-n // 8)}] for n={n}, got {packed.dtype} {packed.shape}"
            )
        self.packed = packed
        self.shape = (packed.shape[0], int(n))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        rows, cols = index if isinstance(index, tuple) else (index, None)
        unpacked = np.unpackbits(self.packed[rows], axis=-1, count=self.shape[1]).view(np.bool_)
        return unpacked if cols is None else unpacked[..., cols]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return self[:].astype(dtype)
