"""Moments of row sets of (masks, margins): all the lasso needs of the store.

Eliminating the unpenalised intercept turns each target's lasso into a problem in
G = Xc^T Xc / m, c = Xc^T yc / m and yy = ||yc||^2 / m, so the solvers never see the
masks, only these. Two forms:

- ``Moments``: centred float64 sums, dense [n, n] (``row_moments``): the reference path's.
- ``CountMoments``: the exact integer counts X^T X of 0/1 masks (float32 holds them
  exactly up to 2^24 rows), the sums, and the centred cross moments X^T (Y - mean Y);
  ``count_moments`` streams a store once for the fit and the validation rows. They are
  computed once per store (the ``moments`` rule) and centred there once, in float64;
  every fit job memory-maps them and reads only the rows and blocks its solver asks for
  (``centred_rows``, ``centred_blocks``; float64 ``sxx`` for the reference path).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from dmflow.core import kernels as dispatch
from dmflow.core.progress import Progress
from dmflow.lasso import kernels
from dmflow.lasso.problem import NULL_SHARE

EXACT_ROWS = 2**24
"""Row count up to which float32 accumulation of 0/1 products is exact."""


@dataclass
class Moments:
    """Centred sums of a set of rows: count, means, Xc^T Xc, Xc^T Yc and ||Yc||^2 (float64)."""

    count: int
    mean_x: torch.Tensor  # [n]
    mean_y: torch.Tensor  # [T]
    sxx: torch.Tensor  # [n, n]
    sxy: torch.Tensor  # [n, T]
    syy: torch.Tensor  # [T]

    def combine(self, other: Moments) -> Moments:
        """The moments of the union of two disjoint row sets (Chan et al.'s pairwise update)."""
        n = self.count + other.count
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        f = self.count * other.count / n
        return Moments(
            n,
            self.mean_x + dx * other.count / n,
            self.mean_y + dy * other.count / n,
            self.sxx + other.sxx + f * torch.outer(dx, dx),
            self.sxy + other.sxy + f * torch.outer(dx, dy),
            self.syy + other.syy + f * dy * dy,
        )

    def select(self, targets: torch.Tensor) -> Moments:
        """The same rows, restricted to some targets."""
        return Moments(self.count, self.mean_x, self.mean_y[targets], self.sxx, self.sxy[:, targets], self.syy[targets])

    def gram(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G, c, yy) of the centred problem, per row, in ``dtype``."""
        m = self.count
        return (self.sxx / m).to(dtype), (self.sxy / m).to(dtype), (self.syy / m).to(dtype)


def row_moments(
    masks: np.ndarray,
    targets_y: np.ndarray,
    rows: np.ndarray,
    *,
    block_rows: int = 4096,
    device: str = "cpu",
) -> Moments:
    """Moments of ``rows`` of (masks [m, n], targets_y [m, T]), read in row blocks (masks may be a memmap).

    Two passes (means, then centred products) avoid the cancellation of raw sums; at
    most ``block_rows`` rows are in memory at once, as float64.
    """
    rows = np.sort(np.asarray(rows))
    n, t = masks.shape[1], targets_y.shape[1]
    f64 = dict(dtype=torch.float64, device=device)
    sum_x, sum_y = torch.zeros(n, **f64), torch.zeros(t, **f64)
    for start in range(0, len(rows), block_rows):
        r = rows[start : start + block_rows]
        sum_x += torch.as_tensor(masks[r], **f64).sum(0)
        sum_y += torch.as_tensor(targets_y[r], **f64).sum(0)
    m = len(rows)
    mean_x, mean_y = sum_x / m, sum_y / m
    sxx, sxy, syy = torch.zeros(n, n, **f64), torch.zeros(n, t, **f64), torch.zeros(t, **f64)
    for start in range(0, len(rows), block_rows):
        r = rows[start : start + block_rows]
        xb = torch.as_tensor(masks[r], **f64) - mean_x
        yb = torch.as_tensor(targets_y[r], **f64) - mean_y
        sxx += xb.T @ xb
        sxy += xb.T @ yb
        syy += (yb * yb).sum(0)
    return Moments(m, mean_x, mean_y, sxx, sxy, syy)


GRAM_COLS = 1024
"""Columns of X^T X per int8 product: its int32 result is [n, GRAM_COLS], not a second [n, n]; narrow enough that
the upper block triangle (``upper``) is little more than half of the matrix."""


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
    every block cost a page fault per 4 KB (at n = 8000, a third of the moments job's time went to the kernel)."""

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


CROSS_TARGETS = 1024
"""Targets per int8 cross product (``add_cross``): its int32 sums are [4 x 1024, n], not [4 T, n]."""


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


@dataclass(frozen=True)
class CountMoments:
    """One row set's moments, centred once from exact counts (the fast fit path's input).

    The centred Gram sum Xc^T Xc is the sum of ``grams`` plus the rank-one terms
    ``shifts`` (coef, v): coef v v^T. One row set has one Gram and no shift; ``combine``
    joins fit and validation rows by Chan et al.'s update, S_a + S_b + (m_a m_b / m) dx
    dx^T, so no third [n, n] matrix is ever formed. Every term is already centred (entries
    ~1e-3 of m, no cancellation left), so float32 arithmetic on them loses nothing.
    """

    count: int
    grams: tuple[np.ndarray, ...]  # float32 [n, n] each: a row set's Xc^T Xc (may be memmaps)
    sum_x: np.ndarray  # float64 [n]: column sums of the masks
    mean_y: np.ndarray  # float64 [T]
    cross: np.ndarray  # [T, n], target-major: X^T (Y - mean_y) = the centred cross moments Xc^T Yc
    syy: np.ndarray  # float64 [T]: ||Y - mean_y||^2
    lip: float | None = None  # the largest eigenvalue of Xc^T Xc / count, when known (``top_eigenvalue``)
    mu: float | None = None  # its smallest non-null one, when known (``bottom_eigenvalue``)
    shifts: tuple[tuple[float, np.ndarray], ...] = ()  # rank-one terms (coef, float64 [n]) of the Gram sum

    @property
    def n(self) -> int:
        return len(self.sum_x)

    @property
    def mean_x(self) -> np.ndarray:
        return self.sum_x / self.count

    def _tensors(self) -> list[torch.Tensor]:
        """The Grams as torch tensors sharing their (memory-mapped, read-only) storage."""
        with warnings.catch_warnings():  # torch warns that a read-only memmap is not writable: it is never written
            warnings.simplefilter("ignore", UserWarning)
            return [torch.from_numpy(np.asarray(g)) for g in self.grams]

    def sxx(self, rows: np.ndarray | slice, cols: np.ndarray | slice = slice(None)) -> np.ndarray:
        """float64 [rows, cols] block of Xc^T Xc; only those rows of the (memory-mapped) Grams are read."""
        rows_t = torch.arange(self.n)[rows] if isinstance(rows, slice) else torch.as_tensor(rows)
        cols_t = torch.arange(self.n)[cols] if isinstance(cols, slice) else torch.as_tensor(cols)
        block = self._sum(rows_t, torch.float64)
        return block[:, cols_t].numpy() if len(cols_t) < self.n else block.numpy()

    def _sum(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[len(rows), n]: rows of the centred sum Xc^T Xc in ``dtype``."""
        rows = rows.cpu()
        block = None
        for g in self._tensors():
            part = g.index_select(0, rows).to(dtype)
            block = part if block is None else block.add_(part)
        for coef, v in self.shifts:
            v_t = torch.from_numpy(v).to(dtype)
            block.addr_(v_t[rows], v_t, alpha=coef)
        return block

    def centred_rows(self, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[len(rows), n]: rows of the centred Gram G = Xc^T Xc / count, in ``dtype``."""
        return self._sum(rows, dtype).div_(self.count)

    def centred_blocks(self, idx: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[t, K, K]: the principal submatrices G[idx_t, idx_t] of the centred Gram, one per row of idx [t, K]
        (features; the value n pads a row and reads 0), in one gather per Gram."""
        at = idx.cpu().clamp(max=self.n - 1)
        rows, cols = at.unsqueeze(2), at.unsqueeze(1)
        out = None
        for g in self._tensors():
            part = g[rows, cols].to(dtype)
            out = part if out is None else out.add_(part)
        for coef, v in self.shifts:
            v_t = torch.from_numpy(v).to(dtype)[at]
            out.add_(v_t.unsqueeze(2) * v_t.unsqueeze(1), alpha=coef)
        keep = (idx.cpu() < self.n).to(dtype)
        return out.div_(self.count).mul_(keep.unsqueeze(2)).mul_(keep.unsqueeze(1))

    def select(self, targets: np.ndarray | slice) -> CountMoments:
        """The same rows, for some targets only (their cross moments read into memory as float64)."""
        return replace(
            self,
            mean_y=self.mean_y[targets],
            cross=np.asarray(self.cross[targets], dtype=np.float64),
            syy=self.syy[targets],
        )

    def combine(self, other: CountMoments, *, lip: float | None = None, mu: float | None = None) -> CountMoments:
        """The moments of the union of two disjoint row sets (Chan et al.'s pairwise update);
        ``lip``, ``mu``: the union's largest and smallest non-null eigenvalues, when known."""
        n = self.count + other.count
        f = self.count * other.count / n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        cross = np.asarray(self.cross, np.float64) + np.asarray(other.cross, np.float64) + f * np.outer(dy, dx)
        return CountMoments(
            n,
            self.grams + other.grams,
            self.sum_x + other.sum_x,
            self.mean_y + dy * other.count / n,
            cross,
            self.syy + other.syy + f * dy * dy,
            lip,
            mu,
            shifts=self.shifts + other.shifts + ((f, dx),),
        )


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


def _operator(mom: CountMoments):
    """G = Xc^T Xc / count as a scipy ``LinearOperator``: one matrix-vector product per Gram in its stored
    float32, not float64 copies of it (the rounding, ~1e-7, is far below the tolerance 1e-4 and the solvers'
    1% margin), plus the rank-one shifts in float64."""
    from scipy.sparse.linalg import LinearOperator  # a heavy import, needed once per row set

    grams = mom._tensors()

    def matvec(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).ravel()
        v32 = torch.from_numpy(v.astype(np.float32))
        out = sum(torch.mv(g, v32) for g in grams).double().numpy()
        for coef, x in mom.shifts:
            out += coef * x * (x @ v)
        return out / mom.count

    return LinearOperator((mom.n, mom.n), matvec=matvec, dtype=np.float64)


def top_eigenvalue(mom: CountMoments) -> float:
    """The largest eigenvalue of G = Xc^T Xc / count, by Lanczos iterations (``scipy.sparse.linalg.eigsh``).

    By Cauchy's interlacing theorem it bounds the largest eigenvalue of every principal
    submatrix G[A, A]: one step size serves every working set. Lanczos approaches it from
    below; to a relative tolerance of 1e-3 (2e-5 off at n = 8000, in 40-50 products where
    1e-4 took 70-80), which the solvers' 1% margin (``CentredGram``) covers.
    """
    from scipy.sparse.linalg import eigsh

    n = mom.n
    op = _operator(mom)
    return float(eigsh(op, k=1, which="LA", tol=1e-3, v0=np.ones(n) / np.sqrt(n), return_eigenvectors=False)[0])


def bottom_eigenvalue(mom: CountMoments, top: float) -> float:
    """The smallest eigenvalue of G = Xc^T Xc / count above ``NULL_SHARE`` x ``top``, within ~1%; 0.0 if
    the three smallest are all null.

    The solvers' plain steps are 2/(L + mu) long with it (``problem.plain_step``): at n = 8000
    they took 23% fewer matrix products than 1/L (benchmarks/RESULTS.md). The gradient lies in
    the range of G, so null directions (with fixed-size masks, the all-ones vector) do not
    limit the rate; and any mu in [0, L) gives a step below 2/L, which converges, so an
    estimate a little high (Lanczos approaches it from above) is safe. Lanczos
    (``eigsh``, which="SA") starts in the range of G; tiny G are solved exactly.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if top <= 0:  # G = 0
        return 0.0
    if mom.n <= 16:  # ARPACK needs k < n
        values = np.linalg.eigvalsh(mom.sxx(slice(None)) / mom.count)
    else:
        op = _operator(mom)
        start = op.matvec(np.random.default_rng(0).standard_normal(mom.n))
        try:
            values = eigsh(op, k=3, which="SA", tol=1e-2, v0=start, return_eigenvectors=False)
        except ArpackNoConvergence as err:  # pragma: no cover - the converged ones, maybe none
            values = err.eigenvalues.real
    positive = values[values > NULL_SHARE * top]
    return float(positive.min()) if positive.size else 0.0
