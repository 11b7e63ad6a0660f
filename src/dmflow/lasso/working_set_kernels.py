"""Numba kernels of the working-set solver (their one caller: ``dmflow.lasso.working_sets`` and the products
it takes from ``dmflow.lasso.stored_gram``): coordinate descent on each target's working set, the sparse
product G W and the quadratic forms w^T G w, all reading the centred Gram as the moments store it (float32
count Grams, memory-mapped, plus rank-one shifts), and the grouping of their index lists by Gram row.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, inline="always")
def _gram_entry(g1, g2, two, shift_v, shift_c, j, jb):  # pragma: no cover
    """The centred Gram sum's entry (j, jb): g1 [+ g2] + sum_k shift_c[k] v_k[j] v_k[jb], in float64."""
    e = np.float64(g1[j, jb])
    if two:
        e += g2[j, jb]
    for s in range(shift_c.shape[0]):
        e += shift_c[s] * shift_v[s, j] * shift_v[s, jb]
    return e


@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def working_set_cd(
    g1,
    g2,
    two,
    shift_v,
    shift_c,
    inv_count,
    idx,
    size,
    w,
    grad,
    lam,
    tol,
    l2,
    nonneg,
    max_epochs,
    converged,
    epochs,
    buf,
    offset,
    rows,
    ptr,
    pair_target,
    pair_position,
):  # pragma: no cover
    """Cyclic coordinate descent for each target on its working set, on the centred Gram as stored.

    The centred Gram is G = (g1 [+ g2 if ``two``] + sum_k shift_c[k] v_k v_k^T) * inv_count
    (g1, g2 float32 [n, n], e.g. memory-mapped; v_k = shift_v[k], float64 [K, n]).
    Target i's working set is idx[i, :size[i]] (features, increasing); w[i, :] its
    weights there (in/out) and grad[i, :] = (G w - c) there on entry (updated in place), both
    float64. First every target's G[set, set] with offset[i] >= 0 is copied into
    buf[offset[i]:offset[i] + size^2] (float32; offset[i] < 0: the Gram rows are read in
    place at every update), a Gram row at a time: row rows[u] (increasing) is read once and
    gives row pair_position[p] of the copy of target pair_target[p], p in ptr[u]:ptr[u + 1]
    (``copy_plan``). Then the epochs run in cache. Copying before the epochs beat reading
    rows in place, and reading each row once for all targets of a batch beat a pass per
    target, since a scattered read of a row costs about as much memory traffic as the
    whole row (benchmarks/RESULTS.md, "The lasso package's figures").

    An epoch visits every coordinate a of the set: the exact minimiser along it is
    soft(w_a - (grad_a + l2 w_a) / (G_aa + l2), lam / (G_aa + l2)) (clipped at 0 when
    ``nonneg``), and a change d updates grad += d G[set, a] (only coordinates that move
    cost |set|). A target stops when its KKT violation on the set is <= tol[i] (the
    proximal solvers' rule), checked before every epoch; epochs[i] counts them and
    converged[i] says whether it stopped by the rule within ``max_epochs``.
    """
    for u in range(rows.size):  # each Gram row once, into every copy that has it
        j = rows[u]
        for p in range(ptr[u], ptr[u + 1]):
            i = pair_target[p]
            k = size[i]
            start = offset[i] + pair_position[p] * k
            for b in range(k):
                buf[start + b] = _gram_entry(g1, g2, two, shift_v, shift_c, j, idx[i, b]) * inv_count
    for i in range(idx.shape[0]):
        k = size[i]
        la = lam[i]
        held = offset[i] >= 0
        sub = buf[offset[i] : offset[i] + k * k].reshape((k, k)) if held else buf[:1].reshape((1, 1))
        diag = np.empty(k)
        for a in range(k):
            j = idx[i, a]
            diag[a] = (sub[a, a] if held else _gram_entry(g1, g2, two, shift_v, shift_c, j, j) * inv_count) + l2
        converged[i] = False
        epochs[i] = 0
        for epoch in range(max_epochs + 1):
            viol = 0.0
            for a in range(k):
                v = w[i, a]
                g = grad[i, a] + l2 * v
                if nonneg:
                    h = g + la
                    viol = max(viol, -h if v == 0 else abs(h))
                elif v == 0:
                    viol = max(viol, abs(g) - la)
                else:
                    viol = max(viol, abs(g + la * np.sign(v)))
            if viol <= tol[i]:
                converged[i] = True
                break
            if epoch == max_epochs:
                break
            epochs[i] = epoch + 1
            for a in range(k):
                h = diag[a]
                if h <= 0:
                    continue
                v = w[i, a]
                z = v - (grad[i, a] + l2 * v) / h
                th = la / h
                new = max(z - th, 0.0) if nonneg else z - min(max(z, -th), th)
                d = new - v
                if d == 0:
                    continue
                w[i, a] = new
                if held:
                    for b in range(k):
                        grad[i, b] += d * sub[a, b]
                else:
                    j = idx[i, a]
                    dc = d * inv_count
                    for b in range(k):
                        grad[i, b] += dc * _gram_entry(g1, g2, two, shift_v, shift_c, j, idx[i, b])


def group_by_row(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grouping the kernels take: (present, ptr, order), the distinct values of ``rows`` (int64,
    increasing), and ``order`` such that rows[order][ptr[u]:ptr[u + 1]] all equal present[u]."""
    order = np.argsort(rows, kind="stable")
    present, counts = np.unique(rows[order], return_counts=True)
    ptr = np.zeros(len(present) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return present.astype(np.int64), ptr, order


def copy_plan(idx: np.ndarray, size: np.ndarray, held: np.ndarray):
    """``working_set_cd``'s copy plan for the targets with ``held`` copies: (rows, ptr, pair_target,
    pair_position), the pairs (target i, position a) with idx[i, a] = rows[u] grouped by row, rows increasing."""
    target, position = np.nonzero((np.arange(idx.shape[1]) < size[:, None]) & held[:, None])
    rows, ptr, order = group_by_row(idx[target, position])
    return rows, ptr, target[order].astype(np.int64), position[order].astype(np.int64)


@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def sparse_gram_product(g1, g2, two, feats, ptr, targets, values, out):  # pragma: no cover
    """out[t, :] += sum_p values[p] (g1 [+ g2])[feats[u], :] over the entries p of ptr[u]:ptr[u + 1] of target
    targets[p]: a product G W of Grams g1, g2 (float32 [n, n], e.g. memory-mapped) and sparse weights W whose
    non-zeros are listed by feature (CSR over the features ``feats``; out float32 [t, n]).

    Its cost is (non-zeros of W) x n, where a dense product costs n x |feats| x t. The columns run in tiles:
    each Gram row's tile is read once and added to the tile of every target that uses the feature, which
    stays in cache ([t, 1024] float32).
    """
    n = g1.shape[1]
    tile = 1024
    both = np.empty(tile, np.float32)
    for c0 in range(0, n, tile):
        c1 = min(c0 + tile, n)
        for u in range(feats.size):
            row = g1[feats[u], c0:c1]
            if two:
                row = both[: c1 - c0]
                row[:] = g1[feats[u], c0:c1]
                row += g2[feats[u], c0:c1]
            for p in range(ptr[u], ptr[u + 1]):
                o = out[targets[p], c0:c1]  # slices: the loop below vectorises (2-d indexing does not)
                v = values[p]
                for c in range(c1 - c0):
                    o[c] += v * row[c]


@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def quadratic_forms(g1, g2, two, shift_v, shift_c, idx, size, w, out):  # pragma: no cover
    """out[i] = w_i^T S[set, set] w_i for each target i, S the Gram sum of ``working_set_cd`` (without its
    1 / count), set = idx[i, :size[i]] (increasing), w[i, :size[i]] the weights there (float64).

    Reads the upper triangle of S[set, set] only: size^2 / 2 entries per target, against n x size for a
    product S w.
    """
    for i in range(idx.shape[0]):
        k = size[i]
        q = 0.0
        for a in range(k):
            j = idx[i, a]
            wa = w[i, a]
            if wa == 0:
                continue
            acc = 0.0
            for b in range(a + 1, k):
                acc += _gram_entry(g1, g2, two, shift_v, shift_c, j, idx[i, b]) * w[i, b]
            q += wa * (_gram_entry(g1, g2, two, shift_v, shift_c, j, j) * wa + 2.0 * acc)
        out[i] = q
