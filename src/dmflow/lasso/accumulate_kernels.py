"""Numba kernels of the int8 cross moments (their one caller: ``dmflow.lasso.accumulate``): centred margins
as fixed-point int8 digits, and the digits' int32 product sums joined exactly into the float32 cross moments.
"""

from __future__ import annotations

import numba as nb
import numpy as np

DIGITS = 4
"""Base-128 digits of the fixed-point margins (``fixed_point_digits``): 4 hold |q| <= 2^26, a resolution of
2^-26 of a target's spread, finer than float32's rounding of the margins themselves."""


@nb.njit(cache=True, nogil=True)
def fixed_point_digits(yc, inv_step, out):  # pragma: no cover
    """The fixed-point margins q = round(yc[r, t] * inv_step[t]) (|q| <= 2^26) as ``DIGITS`` balanced base-128
    digits, q = sum_i 128^i d_i with each d_i in [-64, 64): out[i, t, r] = d_i, int8 [DIGITS, T, b]
    (target-major: the left operand of the int8 product with the rows' masks)."""
    b, t = yc.shape
    tile = 64  # a tile of yc [64, 64] is read by rows and written by columns while it is in cache
    for r0 in range(0, b, tile):
        for j0 in range(0, t, tile):
            for j in range(j0, min(j0 + tile, t)):
                for r in range(r0, min(r0 + tile, b)):
                    q = np.int64(np.rint(yc[r, j] * inv_step[j]))
                    for i in range(DIGITS):
                        d = ((q + 64) & 127) - 64
                        out[i, j, r] = d
                        q = (q - d) >> 7


@nb.njit(cache=True, nogil=True)
def add_fixed_point(cross, counts, step):  # pragma: no cover
    """cross[t, :] += step[t] sum_i 128^i c_i[t, :]: the int8 products c_i of the digits (``fixed_point_digits``;
    counts int32 [DIGITS, T, n]) joined exactly in int64, then scaled once (cross float32 [T, n])."""
    t, n = cross.shape
    for j in range(t):
        s = step[j]
        for c in range(n):
            q = np.int64(counts[DIGITS - 1, j, c])
            for i in range(DIGITS - 2, -1, -1):
                q = 128 * q + np.int64(counts[i, j, c])
            cross[j, c] += np.float32(q * s)
