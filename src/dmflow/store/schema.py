"""The checks a trained chunk and a store imported from elsewhere must pass, before they become a store.

The store's format (``STORE_ARRAYS``, ``CHUNK_ARRAYS``) and its reader are ``dmflow.store.formats``.
The masks are bit-packed along n (``np.packbits``: ceil(n/8) bytes a row); the view
``Store.masks`` (a ``PackedMasks``) unpacks the rows it is asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmflow.core.codes import MODEL_STATUS, STATUS_DIVERGED, STATUS_OK, describe
from dmflow.core.errors import StoreError
from dmflow.store.formats import CHUNK_ARRAYS
from dmflow.store.masks import subset_size


def check_chunk(
    masks: np.ndarray,
    arrays: dict[str, np.ndarray],
    *,
    expected_seeds: np.ndarray,
    n: int,
    alpha: float,
    num_targets: int,
    masks_path: Path,
    train_path: Path,
) -> None:
    """Check one chunk's masks and trained arrays against every promise; raise StoreError naming the file.

    Parameters
    ----------
    masks : bool [C, n]
        The chunk's masks (n training examples); every row must hold round(alpha * n) ones.
    arrays : dict of str to ndarray
        The trained chunk: every entry of ``CHUNK_ARRAYS`` with its dtype and shape
        (C = chunk size, R = replicates from ``expected_seeds``).
    expected_seeds : int64 [C, R]
        The seeds the config derives for this chunk.
    masks_path, train_path : Path
        Named in the messages.
    """
    chunk_size, replicates = expected_seeds.shape
    if masks.dtype != np.bool_ or masks.shape != (chunk_size, n):
        raise StoreError(f"{masks_path}: masks must be bool [{chunk_size}, {n}], got {masks.dtype} {list(masks.shape)}")
    k = subset_size(alpha, n)
    bad_rows = np.flatnonzero(masks.sum(axis=1) != k)
    if bad_rows.size:
        raise StoreError(f"{masks_path}: row {bad_rows[0]} has {masks[bad_rows[0]].sum()} ones, expected {k}")
    missing = sorted({spec.name for spec in CHUNK_ARRAYS} - set(arrays))
    if missing:
        raise StoreError(f"{train_path}: missing array(s) {', '.join(missing)}")
    for spec in CHUNK_ARRAYS:
        want = spec.shape(m=chunk_size, n=n, replicates=replicates, targets=num_targets)
        got = arrays[spec.name]
        if got.dtype != spec.dtype or got.shape != want:
            raise StoreError(
                f"{train_path}: {spec.name} must be {spec.dtype.name} {list(want)}, got {got.dtype} {list(got.shape)}"
            )
    if not np.array_equal(arrays["seeds"], expected_seeds):
        raise StoreError(f"{train_path}: seeds differ from those the config's (seed, alpha, split, chunk) derive")
    if not np.isin(arrays["status"], list(MODEL_STATUS)).all():
        raise StoreError(f"{train_path}: status holds values other than {describe(MODEL_STATUS)}")
    ok = arrays["status"] == STATUS_OK
    if not np.isfinite(arrays["margins"][ok]).all():
        raise StoreError(f"{train_path}: non-finite margins in models marked ok")


def usable_rows(status: np.ndarray) -> np.ndarray:
    """int64 [<= m]: the rows whose first replicate trained without diverging (the fit's rows)."""
    return np.flatnonzero(status[:, 0] == STATUS_OK)


MIN_IMPORTED_ROWS = 3
"""The fewest models a store imported from elsewhere may hold (as the moments ask of a fit store)."""


def check_imported(arrays: dict[str, np.ndarray], *, alpha: float, names: dict[str, str]) -> tuple[int, int, int, int]:
    """Check the shapes and dtypes of arrays trained elsewhere (from their ``.npy`` headers, before any
    work); raise StoreError in one line naming the file and the problem; return (m, n, R, T).

    Parameters
    ----------
    arrays : dict of str to ndarray
        ``masks`` bool or 0/1 integers [m, n]; ``margins`` integers or floats [m, T] (one replicate)
        or [m, R, T]; optional ``status`` integers [m, R] (``MODEL_STATUS``) and ``seeds`` integers [m, R].
    alpha : float
        The subset fraction; every row of the masks must hold round(alpha * n) ones (``check_imported_rows``).
    names : dict of str to str
        Each array's file name, for the messages.
    """
    masks, margins = arrays["masks"], arrays["margins"]
    if masks.ndim != 2 or masks.dtype.kind not in "biu":
        raise StoreError(
            f"{names['masks']}: masks must be bool or 0/1 integers [m, n], got {masks.dtype} {list(masks.shape)}"
        )
    m, n = masks.shape
    if m < MIN_IMPORTED_ROWS:
        raise StoreError(f"{names['masks']}: {m} models; a store needs at least {MIN_IMPORTED_ROWS}")
    if not 0 < alpha < 1 or not 0 < subset_size(alpha, n) < n:
        raise StoreError(f"alpha={alpha} with n={n} gives subset size {subset_size(alpha, n)}; need 0 < size < n")
    if margins.ndim not in (2, 3) or margins.dtype.kind not in "iuf":
        raise StoreError(
            f"{names['margins']}: margins must be integers or floats [m, T] or [m, R, T], "
            f"got {margins.dtype} {list(margins.shape)}"
        )
    replicates = 1 if margins.ndim == 2 else margins.shape[1]
    num_targets = margins.shape[-1]
    if margins.shape[0] != m or replicates < 1 or num_targets < 1:
        raise StoreError(
            f"{names['margins']}: margins {list(margins.shape)} do not fit masks {list(masks.shape)}: "
            f"need [{m}, T] or [{m}, R, T] with R, T >= 1"
        )
    for name in ("status", "seeds"):
        if arrays.get(name) is not None:
            got = arrays[name]
            if got.shape != (m, replicates) or got.dtype.kind not in "iu":
                raise StoreError(
                    f"{names[name]}: {name} must be integers [m, R] = [{m}, {replicates}], got {got.dtype} {list(got.shape)}"
                )
    return m, n, replicates, num_targets


def check_imported_rows(
    masks: np.ndarray,
    margins: np.ndarray,
    status: np.ndarray | None,
    *,
    first_row: int,
    alpha: float,
    names: dict[str, str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check one block of rows of imported arrays and convert them to the store's types; raise StoreError
    in one line naming the file, the row and the problem.

    Parameters
    ----------
    masks : bool or integer [b, n]
        0/1 only, round(alpha * n) ones per row.
    margins : integer or float [b, T] or [b, R, T]
        Finite in float32 for every model marked ok.
    status : integer [b, R] or None
        ``MODEL_STATUS`` codes; None: a model with any non-finite margin is marked diverged (as
        dmflow's training marks its own), every other model ok.
    first_row : int
        The block's first row in the whole array (for the messages).

    Returns
    -------
    masks : bool [b, n]
    margins : float32 [b, R, T]
    status : uint8 [b, R]
    """
    n = masks.shape[1]
    if masks.dtype != np.bool_:
        bad = np.argwhere((masks != 0) & (masks != 1))
        if bad.size:
            r, c = bad[0]
            raise StoreError(
                f"{names['masks']}: row {first_row + r} holds {masks[r, c]} at column {c}; masks must be 0/1"
            )
        masks = masks.astype(np.bool_)
    k = subset_size(alpha, n)
    sums = masks.sum(axis=1)
    bad_rows = np.flatnonzero(sums != k)
    if bad_rows.size:
        r = bad_rows[0]
        raise StoreError(
            f"{names['masks']}: row {first_row + r} has {sums[r]} ones, expected round(alpha * n) = {k} "
            f"(alpha={alpha}, n={n}); every subset must have this size"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.asarray(margins, dtype=np.float32)
    if values.ndim == 2:
        values = values[:, None, :]
    finite = np.isfinite(values).all(axis=2)
    if status is None:
        beyond = np.argwhere(np.isfinite(margins) & ~np.isfinite(values.reshape(margins.shape)))
        if beyond.size:
            r, *rest = beyond[0]
            where = f"row {first_row + r}" + (f", replicate {rest[0]}" if len(rest) == 2 else "")
            raise StoreError(
                f"{names['margins']}: {where}, target {rest[-1]}: margin {margins[tuple(beyond[0])]:.3g} is finite "
                f"but beyond float32's range (+-{np.finfo(np.float32).max:.3g}), in which dmflow stores margins; "
                "rescale the margins (or mark such models diverged with a status file)"
            )
        codes = np.where(finite, STATUS_OK, STATUS_DIVERGED).astype(np.uint8)
    else:
        if not np.isin(status, list(MODEL_STATUS)).all():
            raise StoreError(f"{names['status']}: status holds values other than {describe(MODEL_STATUS)}")
        codes = status.astype(np.uint8)
        bad = np.argwhere((codes == STATUS_OK) & ~finite)
        if bad.size:
            r, j = bad[0]
            raise StoreError(
                f"{names['margins']}: row {first_row + r}, replicate {j}: NaN, infinite or beyond float32's range "
                f"margins in a model that {names['status']} marks ok"
            )
    return masks, values, codes


def check_imported_seeds(seeds: np.ndarray, *, first_row: int, names: dict[str, str]) -> np.ndarray:
    """One block of imported seeds [b, R] as the store's int64; a seed int64 cannot hold (an unsigned seed
    of 2^63 or more) is a StoreError line naming the file and row, never wrapped to a negative number."""
    seeds = np.asarray(seeds)
    if seeds.dtype.kind == "u" and seeds.size and seeds.max() > np.iinfo(np.int64).max:
        r, j = np.argwhere(seeds > np.iinfo(np.int64).max)[0]
        raise StoreError(
            f"{names['seeds']}: row {first_row + r}, replicate {j}: seed {seeds[r, j]} is beyond int64 "
            f"(0..{np.iinfo(np.int64).max}), in which the store keeps seeds"
        )
    return seeds.astype(np.int64)
