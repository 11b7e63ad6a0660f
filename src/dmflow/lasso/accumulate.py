"""The streaming accumulation of ``CountMoments``: a store's rows read once, their exact counts X^T X and
cross moments added a block at a time (float32 products, or int8 ones where they are measured faster here).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from dmflow.core import kernels as dispatch
from dmflow.core.budgets import CROSS_TARGETS, GRAM_COLS
from dmflow.core.progress import Progress
from dmflow.lasso import accumulate_kernels as kernels
from dmflow.lasso.moments import CountMoments

EXACT_ROWS = 2**24
"""Row count up to which float32 accumulation of 0/1 products is exact."""


def add_gram(
    gram: torch.Tensor, x: np.ndarray, *, scratch: GramScratch | None = None, upper: bool = False, int8: bool = False
) -> None:
    """gram += x^T x for bool rows x [b, n]: integer counts, exact in float32 up to 2^24 rows in all.

    ``GRAM_COLS`` columns at a time, as one float32 product (every partial sum is an
    integer below 2^24, so exact) or, with ``int8``, one product of 0/1 int8 with int32
    sums (``torch._int_mm``: fast only on CPUs with int8 matrix units, AMX or VNNI;
    ``gram_kernel`` chooses). ``upper``: each column block adds only its rows up to its
    last column (the upper block triangle, about half the work, x^T x being symmetric);
    ``mirror_upper`` fills the rest once after the last block. ``scratch`` (for blocks of
    up to its rows) holds the temporaries from one block to the next.
    """
    rows = torch.from_numpy(x.view(np.int8))
    b, n = x.shape
    scratch = scratch if scratch is not None and b <= scratch.block_rows else GramScratch(b, n)
    if int8:
        lhs = scratch.take("lhs", (n, b)).copy_(rows.T)
    else:  # on the Gram's device (a GPU's float32 product: exact too)
        dense = scratch.take("rows", (b, n)).copy_(rows).to(gram.device)
    for start in range(0, n, GRAM_COLS):
        stop = min(start + GRAM_COLS, n)
        height = stop if upper else n
        if int8:
            counts = scratch.take("counts", (height, stop - start))
            rhs = scratch.take("rhs", (b, stop - start)).copy_(rows[:, start:stop])
            torch._int_mm(lhs[:height], rhs, out=counts)
            gram[:height, start:stop].add_(counts)
        else:
            gram[:height, start:stop].addmm_(dense[:, :height].T, dense[:, start:stop])


def mirror_upper(gram: torch.Tensor) -> None:
    """Fill what ``add_gram(..., upper=True)`` left out, below the diagonal blocks of ``GRAM_COLS`` columns,
    from its mirror image above them (exact copies: the sums are symmetric)."""
    n = gram.shape[0]
    for start in range(0, n, GRAM_COLS):
        stop = min(start + GRAM_COLS, n)
        gram[stop:, start:stop] = gram[start:stop, stop:].T


class GramScratch:
    """The temporaries of ``add_gram``, ``add_cross`` and ``count_moments`` for blocks of up to ``block_rows``
    rows of n features and ``targets`` margins, allocated once (pages touched only as used): fresh ones for
    every block cost a page fault per 4 KB (benchmarks/RESULTS.md, "The lasso package's figures")."""

    def __init__(self, block_rows: int, n: int, targets: int = 0) -> None:
        self.block_rows = block_rows
        width = min(GRAM_COLS, n)
        self._flat = {  # x^T, a block of x's columns, their int32 counts, x as float32
            "lhs": torch.empty(n * block_rows, dtype=torch.int8),
            "rhs": torch.empty(block_rows * width, dtype=torch.int8),
            "counts": torch.empty(n * width, dtype=torch.int32),
            "rows": torch.empty(block_rows * n, dtype=torch.float32),
            # the margins as float32, or as int8 digits and the int32 sums of their products
            "margins": torch.empty(block_rows * targets, dtype=torch.float32),
            "digits": torch.empty(kernels.DIGITS * min(targets, CROSS_TARGETS) * block_rows, dtype=torch.int8),
            "digit_sums": torch.empty(kernels.DIGITS * min(targets, CROSS_TARGETS) * n, dtype=torch.int32),
        }

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous [shape] tensor on the named buffer (its contents undefined)."""
        return self._flat[name][: int(np.prod(shape))].view(shape)


def add_cross(
    cross: np.ndarray | torch.Tensor,
    x: np.ndarray,
    yc: np.ndarray,
    *,
    step: np.ndarray,
    int8: bool,
    scratch: GramScratch,
) -> None:
    """cross += yc^T x for bool rows x [b, n] and centred margins yc float64 [b, T] (cross float32 [T, n]; a
    tensor on another device takes the float32 product there).

    ``int8``: the margins rounded to multiples of ``step`` [T] (``FIXED_POINT_BITS``) as
    ``kernels.DIGITS`` int8 digits each, one int8 product of all digits of ``CROSS_TARGETS``
    targets with x (exact int32 sums), the digits' sums joined in int64 and scaled once
    (``cross_kernel`` says where this wins). Else one float32 product.
    """
    (b, t), n = yc.shape, x.shape[1]
    if int8:
        rows = torch.from_numpy(x.view(np.int8))
        for start in range(0, t, CROSS_TARGETS):
            part = slice(start, min(start + CROSS_TARGETS, t))
            width = part.stop - start
            digits = scratch.take("digits", (kernels.DIGITS, width, b))
            kernels.fixed_point_digits(yc[:, part], 1.0 / step[part], digits.numpy())
            sums = scratch.take("digit_sums", (kernels.DIGITS * width, n))
            torch._int_mm(digits.view(kernels.DIGITS * width, b), rows, out=sums)
            kernels.add_fixed_point(cross[part], sums.numpy().reshape(kernels.DIGITS, width, n), step[part])
        return
    out = torch.as_tensor(cross)
    y32 = scratch.take("margins", (b, t)).copy_(torch.from_numpy(yc)).to(out.device)
    x32 = scratch.take("rows", (b, n)).copy_(torch.from_numpy(x)).to(out.device)
    out.addmm_(y32.T, x32)


FIXED_POINT_BITS = 7 * kernels.DIGITS - 2
"""The int8 cross product rounds each centred margin to a multiple of 2^-26 of its target's spread max |y - mean|
(|q| <= 2^26, well inside what ``kernels.DIGITS`` = 4 balanced base-128 digits hold): the sums over the rows are
then exact, and more accurate than float32 sums."""


PROBE_ROWS = 512
"""The kernel probes (``gram_kernel``, ``cross_kernel``) time one block of at most this many rows, features and
targets: the shape class of a moments job, small enough that the probes take well under a second."""


def gram_kernel(rows: int, n: int) -> str:
    """``add_gram``'s arithmetic for blocks of ``rows`` mask rows of ``n`` features, "float32" or "int8":
    forced, or measured here once per process (``dmflow.core.kernels.choose``, kind "gram")."""
    b, c = min(rows, PROBE_ROWS), min(n, PROBE_ROWS)
    x = np.random.default_rng(0).random((b, c)) < 0.5
    gram, scratch = torch.zeros((c, c)), GramScratch(b, c)
    probes = {
        name: functools.partial(add_gram, gram, x, scratch=scratch, upper=True, int8=name == "int8")
        for name in ("float32", "int8")
    }
    return dispatch.choose("gram", probes, shape=(b, c))


def cross_kernel(rows: int, n: int, targets: int) -> str:
    """``add_cross``'s arithmetic for blocks of ``rows`` rows, ``n`` features and ``targets`` margins, "float32"
    or "int8" (four int8 digits per margin: it pays only where an int8 product is ~4x float32 or more)."""
    b, c, t = min(rows, PROBE_ROWS), min(n, PROBE_ROWS), max(1, min(targets, PROBE_ROWS))
    rng = np.random.default_rng(0)
    x, yc = rng.random((b, c)) < 0.5, rng.standard_normal((b, t))
    cross, step, scratch = np.zeros((t, c), np.float32), np.full(t, 2.0**-20), GramScratch(b, c, t)
    probes = {
        name: functools.partial(add_cross, cross, x, yc, step=step, int8=name == "int8", scratch=scratch)
        for name in ("float32", "int8")
    }
    return dispatch.choose("cross", probes, shape=(b, c, t))


def count_moments(
    masks: np.ndarray,
    margins: np.ndarray,
    row_sets: Sequence[np.ndarray],
    *,
    block_rows: int = 8192,
    gram: str | None = None,
    cross: str | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> list[CountMoments]:
    """The ``CountMoments`` of each of some disjoint row sets, in two streaming passes over the rows.

    Parameters
    ----------
    masks : bool [m, n]
        The masks (a ``PackedMasks`` view of the store unpacks each block of rows).
    margins : float [m, T]
        One margin per row and target (a memmap slice of the store).
    row_sets : sequence of int arrays
        Disjoint sets of rows (e.g. the fit rows and the validation rows).
    block_rows : int
        Rows in memory at once: they are unpacked in buffers allocated once (``GramScratch``).
    gram, cross : {"float32", "int8"}, optional
        The arithmetic of the Gram products (``add_gram``) and of the cross moments
        (``add_cross``: int8 products of fixed-point margins, ``FIXED_POINT_BITS``); by
        default what ``gram_kernel`` and ``cross_kernel`` choose on this machine. The
        counts are identical either way; the cross moments differ by rounding only.
    device : str
        Where the products run and the sums accumulate: "cpu", or a GPU ("cuda"), where
        both are float32 products (TF32 off: exact counts) and the results come back to
        the CPU at the end; the rows are read and centred on the CPU either way.
    progress : Progress, optional
        Set to the rows of pass 2 done after each block (its total: m rows).

    Pass 1 reads the margins for their means and ranges; pass 2 adds each block's X^T X
    (exact counts, its upper block triangle: ``add_gram``) and X^T (Y - mean) (the
    margins centred first, so no cancellation) to every row set's accumulators; the
    counts are then mirrored (``mirror_upper``) and centred in place, in float64
    (``_centre``). Memory: one [n, n] and one [T, n] float32 accumulator per row set,
    plus one block (and, for int8 cross products, their int32 sums [4 x 1024, n]).
    """
    m, n = masks.shape
    t = margins.shape[1]
    block_rows = max(1, min(block_rows, m))
    on_cpu = torch.device(device).type == "cpu"
    int8_gram = on_cpu and (gram or gram_kernel(block_rows, n)) == "int8"
    int8_cross = on_cpu and (cross or cross_kernel(block_rows, n, t)) == "int8"
    member = np.full(m, -1, dtype=np.int64)
    for k, rows in enumerate(row_sets):
        if len(rows) >= EXACT_ROWS:
            raise ValueError(f"{len(rows)} rows: float32 counts are exact only up to 2^24 rows")
        member[np.asarray(rows)] = k
    counts = [len(rows) for rows in row_sets]
    scratch = GramScratch(block_rows, n, t)
    x_buf = np.empty((block_rows, n), np.bool_)
    y_buf = np.empty((block_rows, t), np.result_type(margins.dtype, np.float32))  # the margins, not rounded
    yc_buf = np.empty((block_rows, t), np.float64)
    sums_y = [np.zeros(t) for _ in row_sets]
    lo, hi = [np.full(t, np.inf) for _ in row_sets], [np.full(t, -np.inf) for _ in row_sets]
    for start in range(0, m, block_rows):
        which = member[start : start + block_rows]
        y_all = np.asarray(margins[start : start + block_rows], dtype=y_buf.dtype)
        for k in range(len(row_sets)):
            here = np.flatnonzero(which == k)
            if not len(here):
                continue
            y = np.take(y_all, here, axis=0, out=y_buf[: len(here)])
            sums_y[k] += y.sum(0, dtype=np.float64)
            np.minimum(lo[k], y.min(0), out=lo[k])
            np.maximum(hi[k], y.max(0), out=hi[k])
    mean_y = [s / max(c, 1) for s, c in zip(sums_y, counts)]
    spread = [np.maximum(h - mu, mu - low) for low, h, mu in zip(lo, hi, mean_y)]
    for k, sp in enumerate(spread):
        if counts[k] and not np.isfinite(sp).all():  # a store's usable rows never have them
            raise ValueError(f"row set {k}: non-finite margins of target {int(np.flatnonzero(~np.isfinite(sp))[0])}")
    steps = [np.where((sp > 0) & np.isfinite(sp), sp, 1.0) / 2**FIXED_POINT_BITS for sp in spread]
    if not on_cpu:  # TF32 would round the margins to 10 bits in the cross products
        torch.backends.cuda.matmul.allow_tf32 = False
    grams = [torch.zeros((n, n), dtype=torch.float32, device=device) for _ in row_sets]
    crosses = [torch.zeros((t, n), dtype=torch.float32, device=device) for _ in row_sets]
    syy = [np.zeros(t) for _ in row_sets]
    for start in range(0, m, block_rows):
        which = member[start : start + block_rows]
        if not (which >= 0).any():
            continue
        x_all = masks[start : start + block_rows]
        y_all = np.asarray(margins[start : start + block_rows], dtype=y_buf.dtype)
        for k in range(len(row_sets)):
            here = np.flatnonzero(which == k)
            if not len(here):
                continue
            x = np.take(x_all, here, axis=0, out=x_buf[: len(here)])
            yc = np.subtract(np.take(y_all, here, axis=0, out=y_buf[: len(here)]), mean_y[k], out=yc_buf[: len(here)])
            syy[k] += np.einsum("ij,ij->j", yc, yc)
            add_gram(grams[k], x, scratch=scratch, upper=True, int8=int8_gram)
            add_cross(
                crosses[k].numpy() if int8_cross else crosses[k], x, yc, step=steps[k], int8=int8_cross, scratch=scratch
            )
        if progress is not None:
            progress.update(min(start + block_rows, m))
    for g in grams:
        mirror_upper(g)
    grams = [g.cpu().numpy() for g in grams]
    crosses = [c.cpu().numpy() for c in crosses]
    sums_x = [np.diagonal(g).astype(np.float64) for g in grams]  # x_i^2 = x_i: the diagonal counts the ones
    for g, c, sx in zip(grams, counts, sums_x):
        _centre(g, sx / max(c, 1), c)
    return [
        CountMoments(c, (g,), sx, my, cr, sy)
        for c, g, sx, my, cr, sy in zip(counts, grams, sums_x, mean_y, crosses, syy)
    ]


def _centre(gram: np.ndarray, mean_x: np.ndarray, count: int, *, block_rows: int = 1024) -> None:
    """X^T X -> Xc^T Xc = X^T X - count mean_x mean_x^T in place, a block of rows at a time in float64
    (the subtraction cancels ~0.25 m down to ~1e-3 m: float32 would keep only ~4 digits)."""
    g, mu = torch.from_numpy(gram), torch.from_numpy(mean_x)
    for start in range(0, len(mean_x), block_rows):
        rows = slice(start, start + block_rows)
        g[rows] = g[rows].double().addr_(mu[rows], mu, alpha=-count).float()
