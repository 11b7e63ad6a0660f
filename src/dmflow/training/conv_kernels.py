"""numba kernels of ``dmflow.training.fused``: a block conv3x3 -> batch norm -> ReLU -> maxpool 2x2,
for K models at once, without writing the convolution's output to memory.

Layout: one model's activations are NHWC, ``[K, B, H, W, C]`` for the stack; weights are
``[K, 9, C, O8]`` (tap, input channel, output channel), output channels padded with zeros
to ``O8``, a multiple of 8 (one SIMD vector, ``dmflow.training.simd``). The first block
reads its input zero-padded by one pixel (``[K, B, H + 2, W + 2, C]``); a later block reads
the previous block's pooled selection ``psel`` and applies that block's batch norm and
ReLU itself, one image at a time into a padded scratch image, so no block's output is ever
written out whole. Every kernel works on items ``lo`` to ``hi`` (images, or a model's
share of images) and releases the interpreter lock: the caller runs ranges side by side
on its threads.

Why it is exact and cheap: batch norm with batch statistics followed by ReLU is, per
channel, a monotone map of the convolution's output y (non-decreasing where the scale
gamma / sigma is >= 0, non-increasing where it is < 0), so max-pooling its output equals
the map of the window's max of y (of its min where the scale is negative), and float
rounding, itself monotone, keeps that equality exact. So the forward kernel computes y
one 2x2 window at a time in registers, adds its batch-norm sums, and keeps only the
selected value of each window: a quarter of y, never y itself. The backward kernel
recomputes y and the selected position the same way (FLOPs instead of a full-resolution
tensor's memory traffic), forms dL/dy from batch norm's closed-form gradient, and turns it
into the weight gradient and the input gradient image by image in cache.

The selected position follows ``nn.MaxPool2d``: the first of equal values in the order
(0, 0), (0, 1), (1, 0), (1, 1).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from dmflow.training.simd import vadd, vfma, vload, vmul, vsel_eq, vsel_gt, vsel_lt, vsplat, vsplat_at, vstore, vsub

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@nb.njit(**_JIT)
def _conv_2x2_2v(xf, xb, rs, cin, wf, wb, o8):
    """A 2x2 block of output pixels, 16 output channels (two vectors) from ``wb``; x patch origin ``xb``."""
    z = vsplat(0.0, wf)
    p00a, p00b, p01a, p01b, p10a, p10b, p11a, p11b = z, z, z, z, z, z, z, z
    for c in range(cin):  # taps innermost: a constant trip count, unrolled, whatever C is
        for ty in range(3):
            for tx in range(3):
                xt = xb + ty * rs + tx * cin
                wt = wb + (ty * 3 + tx) * cin * o8
                wa = vload(wf, wt + c * o8)
                wv = vload(wf, wt + c * o8 + 8)
                v = vsplat_at(xf, xt + c)
                p00a = vfma(v, wa, p00a)
                p00b = vfma(v, wv, p00b)
                v = vsplat_at(xf, xt + cin + c)
                p01a = vfma(v, wa, p01a)
                p01b = vfma(v, wv, p01b)
                v = vsplat_at(xf, xt + rs + c)
                p10a = vfma(v, wa, p10a)
                p10b = vfma(v, wv, p10b)
                v = vsplat_at(xf, xt + rs + cin + c)
                p11a = vfma(v, wa, p11a)
                p11b = vfma(v, wv, p11b)
    return p00a, p01a, p10a, p11a, p00b, p01b, p10b, p11b


@nb.njit(**_JIT)
def _conv_2x4_1v(xf, xb, rs, cin, wf, wb, o8):
    """Two horizontally adjacent 2x2 blocks (2x4 output pixels), 8 output channels (one vector)."""
    z = vsplat(0.0, wf)
    p00, p01, p02, p03, p10, p11, p12, p13 = z, z, z, z, z, z, z, z
    for c in range(cin):  # taps innermost: a constant trip count, unrolled, whatever C is
        for ty in range(3):
            for tx in range(3):
                xt = xb + ty * rs + tx * cin
                wt = wb + (ty * 3 + tx) * cin * o8
                wa = vload(wf, wt + c * o8)
                p00 = vfma(vsplat_at(xf, xt + c), wa, p00)
                p01 = vfma(vsplat_at(xf, xt + cin + c), wa, p01)
                p02 = vfma(vsplat_at(xf, xt + 2 * cin + c), wa, p02)
                p03 = vfma(vsplat_at(xf, xt + 3 * cin + c), wa, p03)
                p10 = vfma(vsplat_at(xf, xt + rs + c), wa, p10)
                p11 = vfma(vsplat_at(xf, xt + rs + cin + c), wa, p11)
                p12 = vfma(vsplat_at(xf, xt + rs + 2 * cin + c), wa, p12)
                p13 = vfma(vsplat_at(xf, xt + rs + 3 * cin + c), wa, p13)
    return p00, p01, p10, p11, p02, p03, p12, p13


@nb.njit(**_JIT)
def _conv_2x2_1v(xf, xb, rs, cin, wf, wb, o8):
    """One 2x2 block of output pixels, 8 output channels (one vector)."""
    z = vsplat(0.0, wf)
    p00, p01, p10, p11 = z, z, z, z
    for c in range(cin):  # taps innermost: a constant trip count, unrolled, whatever C is
        for ty in range(3):
            for tx in range(3):
                xt = xb + ty * rs + tx * cin
                wt = wb + (ty * 3 + tx) * cin * o8
                wa = vload(wf, wt + c * o8)
                p00 = vfma(vsplat_at(xf, xt + c), wa, p00)
                p01 = vfma(vsplat_at(xf, xt + cin + c), wa, p01)
                p10 = vfma(vsplat_at(xf, xt + rs + c), wa, p10)
                p11 = vfma(vsplat_at(xf, xt + rs + cin + c), wa, p11)
    return p00, p01, p10, p11


@nb.njit(**_JIT)
def _pool(v0, v1, v2, v3, up, like):
    """The window's max (where ``up`` > 0.5) or min, and its position 0..3 (first of equals)."""
    z = vsplat(0.0, like)
    mx, ix, mn, jn = v0, z, v0, z
    q = vsplat(1.0, like)
    ix = vsel_gt(v1, mx, q, ix)
    mx = vsel_gt(v1, mx, v1, mx)
    jn = vsel_lt(v1, mn, q, jn)
    mn = vsel_lt(v1, mn, v1, mn)
    q = vsplat(2.0, like)
    ix = vsel_gt(v2, mx, q, ix)
    mx = vsel_gt(v2, mx, v2, mx)
    jn = vsel_lt(v2, mn, q, jn)
    mn = vsel_lt(v2, mn, v2, mn)
    q = vsplat(3.0, like)
    ix = vsel_gt(v3, mx, q, ix)
    mx = vsel_gt(v3, mx, v3, mx)
    jn = vsel_lt(v3, mn, q, jn)
    mn = vsel_lt(v3, mn, v3, mn)
    half = vsplat(0.5, like)
    return vsel_gt(up, half, mx, mn), vsel_gt(up, half, ix, jn)


@nb.njit(**_JIT)
def _relu(v):
    """max(v, 0) that keeps NaN (as torch's ReLU does)."""
    z = vsplat(0.0, v)
    return vsel_lt(v, z, z, v)


@nb.njit(**_JIT)
def _window_out(v0, v1, v2, v3, uf, sf, pf, po, co, s, q):
    """The sums of y - shift and of its square, and the pooled selection, of one window's vector."""
    shift = vload(sf, co)
    d0, d1, d2, d3 = vsub(v0, shift), vsub(v1, shift), vsub(v2, shift), vsub(v3, shift)
    s = vadd(s, vadd(vadd(d0, d1), vadd(d2, d3)))
    q = vfma(d0, d0, vfma(d1, d1, vfma(d2, d2, vfma(d3, d3, q))))
    sel, _ = _pool(v0, v1, v2, v3, vload(uf, co), sf)
    vstore(pf, po, sel)
    return s, q


@nb.njit(**_JIT)
def _input_image(src, kb, k, prev_scale, prev_bias, xs, h, wd, cin):
    """Image kb of a later block's input, relu(scale * psel + bias) of the previous block, into xs's interior."""
    wp = wd + 2
    for i in range(h):
        for j in range(wd):
            s = ((kb * h + i) * wd + j) * cin
            d = ((i + 1) * wp + j + 1) * cin
            for c0 in range(0, cin, 8):
                v = vfma(vload(src, s + c0), vload(prev_scale, k * cin + c0), vload(prev_bias, k * cin + c0))
                vstore(xs, d + c0, _relu(v))


@nb.njit(**_JIT)
def block_forward(lo, hi, src, prev_scale, prev_bias, w, up, shift, psel, psum, psq):  # pragma: no cover - numba
    """Convolution, batch-norm sums and pooled selection of one block, for images lo..hi-1 of the K*B.

    src: the first block's padded input [K, B, H+2, W+2, C] (``prev_scale`` of shape
    [K, 0]), or the previous block's psel [K, B, H, W, C] with its output's scale and
    bias [K, C]; w [K, 9, C, O8]; up, shift [K, O8]: 1.0 where a channel's batch-norm
    scale is >= 0 (pool the max) else 0.0 (the min), and the shift subtracted from y
    before its sums. Writes psel [K, B, H/2, W/2, O8] (each window's selected y) and
    psum, psq [K, B, O8] (sums of y - shift and of its square over the image).
    """
    batch, hq, wq, o8 = psel.shape[1], psel.shape[2], psel.shape[3], psel.shape[4]
    cin = w.shape[2]
    h, wd = 2 * hq, 2 * wq
    wp = wd + 2
    rs = wp * cin
    direct = prev_scale.shape[1] == 0
    srcf, wf, uf, sf = src.reshape(-1), w.reshape(-1), up.reshape(-1), shift.reshape(-1)
    psf, pbf = prev_scale.reshape(-1), prev_bias.reshape(-1)
    pf, sumf, sqf = psel.reshape(-1), psum.reshape(-1), psq.reshape(-1)
    xs = np.zeros((h + 2) * rs, dtype=src.dtype)
    for kb in range(lo, hi):
        k = kb // batch
        if direct:
            xf, xbase = srcf, kb * (h + 2) * rs
        else:
            _input_image(srcf, kb, k, psf, pbf, xs, h, wd, cin)
            xf, xbase = xs, 0
        wbase = k * 9 * cin * o8
        pbase = kb * hq * wq * o8
        o0 = 0
        while o0 + 16 <= o8:
            z = vsplat(0.0, wf)
            sa, qa, sb, qb = z, z, z, z
            for i in range(hq):
                for j in range(wq):
                    y = _conv_2x2_2v(xf, xbase + (2 * i * wp + 2 * j) * cin, rs, cin, wf, wbase + o0, o8)
                    po = pbase + (i * wq + j) * o8 + o0
                    sa, qa = _window_out(y[0], y[1], y[2], y[3], uf, sf, pf, po, k * o8 + o0, sa, qa)
                    sb, qb = _window_out(y[4], y[5], y[6], y[7], uf, sf, pf, po + 8, k * o8 + o0 + 8, sb, qb)
            vstore(sumf, kb * o8 + o0, sa)
            vstore(sqf, kb * o8 + o0, qa)
            vstore(sumf, kb * o8 + o0 + 8, sb)
            vstore(sqf, kb * o8 + o0 + 8, qb)
            o0 += 16
        if o0 < o8:
            z = vsplat(0.0, wf)
            sa, qa = z, z
            co = k * o8 + o0
            for i in range(hq):
                j = 0
                while j + 2 <= wq:
                    y = _conv_2x4_1v(xf, xbase + (2 * i * wp + 2 * j) * cin, rs, cin, wf, wbase + o0, o8)
                    po = pbase + (i * wq + j) * o8 + o0
                    sa, qa = _window_out(y[0], y[1], y[2], y[3], uf, sf, pf, po, co, sa, qa)
                    sa, qa = _window_out(y[4], y[5], y[6], y[7], uf, sf, pf, po + o8, co, sa, qa)
                    j += 2
                if j < wq:
                    y = _conv_2x2_1v(xf, xbase + (2 * i * wp + 2 * j) * cin, rs, cin, wf, wbase + o0, o8)
                    sa, qa = _window_out(y[0], y[1], y[2], y[3], uf, sf, pf, pbase + (i * wq + j) * o8 + o0, co, sa, qa)
            vstore(sumf, kb * o8 + o0, sa)
            vstore(sqf, kb * o8 + o0, qa)


@nb.njit(**_JIT)
def head_features(lo, hi, psel, scale, bias, feat):  # pragma: no cover - numba
    """The last block's output relu(scale * psel + bias), averaged over its positions: feat [K, B, O8]."""
    batch, hq, wq, o8 = psel.shape[1], psel.shape[2], psel.shape[3], psel.shape[4]
    pf, cf, bf, ff = psel.reshape(-1), scale.reshape(-1), bias.reshape(-1), feat.reshape(-1)
    inv = 1.0 / (hq * wq)
    for kb in range(lo, hi):
        k = kb // batch
        for o0 in range(0, o8, 8):
            sc, bi = vload(cf, k * o8 + o0), vload(bf, k * o8 + o0)
            acc = vsplat(0.0, pf)
            for ij in range(hq * wq):
                acc = vadd(acc, _relu(vfma(vload(pf, (kb * hq * wq + ij) * o8 + o0), sc, bi)))
            vstore(ff, kb * o8 + o0, vmul(acc, vsplat(inv, pf)))


@nb.njit(**_JIT)
def head_grad_sums(lo, hi, gfeat, psel, scale, bias, mean, gsum, gxsum):  # pragma: no cover - numba
    """The last block's sums for batch norm's gradient: of g and of g * (psel - mean), per image.

    g = gfeat / (Hq * Wq) (the average pool's gradient) where the output is positive, else 0;
    gfeat [K, B, 1, 1, O8]. Writes gsum, gxsum [K, B, O8].
    """
    batch, hq, wq, o8 = psel.shape[1], psel.shape[2], psel.shape[3], psel.shape[4]
    gf, pf, cf, bf, mf = gfeat.reshape(-1), psel.reshape(-1), scale.reshape(-1), bias.reshape(-1), mean.reshape(-1)
    sf, xf = gsum.reshape(-1), gxsum.reshape(-1)
    inv = 1.0 / (hq * wq)
    for kb in range(lo, hi):
        k = kb // batch
        for o0 in range(0, o8, 8):
            sc, bi, mu = vload(cf, k * o8 + o0), vload(bf, k * o8 + o0), vload(mf, k * o8 + o0)
            go = vmul(vload(gf, kb * o8 + o0), vsplat(inv, pf))
            z = vsplat(0.0, pf)
            s, sx = z, z
            for ij in range(hq * wq):
                p = vload(pf, (kb * hq * wq + ij) * o8 + o0)
                g = vsel_gt(vfma(p, sc, bi), z, go, z)
                s = vadd(s, g)
                sx = vfma(g, vsub(p, mu), sx)
            vstore(sf, kb * o8 + o0, s)
            vstore(xf, kb * o8 + o0, sx)


@nb.njit(**_JIT)
def _dy_window(y0, y1, y2, y3, up, g, c1, c0, df, do, rs8, o8):
    """Store dL/dy of one window's vector: c1 * y + c0, plus g at the pooled position."""
    _, idx = _pool(y0, y1, y2, y3, up, g)
    z = vsplat(0.0, g)
    vstore(df, do, vadd(vfma(c1, y0, c0), vsel_eq(idx, z, g, z)))
    vstore(df, do + o8, vadd(vfma(c1, y1, c0), vsel_eq(idx, vsplat(1.0, g), g, z)))
    vstore(df, do + rs8, vadd(vfma(c1, y2, c0), vsel_eq(idx, vsplat(2.0, g), g, z)))
    vstore(df, do + rs8 + o8, vadd(vfma(c1, y3, c0), vsel_eq(idx, vsplat(3.0, g), g, z)))


@nb.njit(**_JIT)
def _g_window(gf, pf, cf, bf, tf, kb, k, i, j, o0, hq, wq, o8, head):
    """t * dL/d(output) at pooled (i, j), t = gamma / sigma: from the head (masked here), or given masked."""
    if head > 0.0:
        p = vload(pf, ((kb * hq + i) * wq + j) * o8 + o0)
        z = vsplat(0.0, p)
        out = vfma(p, vload(cf, k * o8 + o0), vload(bf, k * o8 + o0))
        g = vsel_gt(out, z, vmul(vload(gf, kb * o8 + o0), vsplat(head, p)), z)
    else:
        g = vload(gf, ((kb * hq + i) * wq + j) * o8 + o0)
    return vmul(g, vload(tf, k * o8 + o0))


@nb.njit(**_JIT)
def _row_offset(r, rows, cin, wp):
    """Offset in the padded image of weight row r = tap * C + channel (rows past the end: the last row's)."""
    r = min(r, rows - 1)
    t = r // cin
    return ((t // 3) * wp + t % 3) * cin + r % cin


@nb.njit(**_JIT)
def _add_row(acc, r, rows, o8, o0, a):
    if r < rows:
        vstore(acc, r * o8 + o0, vadd(vload(acc, r * o8 + o0), a))


@nb.njit(**_JIT)
def _dw_4x2(xf, xbase, dy, acc, r0, rows, cin, wp, h, wd, o8, o0):
    """Weight-gradient rows r0..r0+3, output channels o0..o0+15, summed over one image."""
    f0, f1 = _row_offset(r0, rows, cin, wp), _row_offset(r0 + 1, rows, cin, wp)
    f2, f3 = _row_offset(r0 + 2, rows, cin, wp), _row_offset(r0 + 3, rows, cin, wp)
    z = vsplat(0.0, xf)
    a0, a1, a2, a3, b0, b1, b2, b3 = z, z, z, z, z, z, z, z
    for i in range(h):
        for j in range(wd):
            d = ((i + 1) * wp + j + 1) * o8 + o0
            da, db = vload(dy, d), vload(dy, d + 8)
            xb = xbase + (i * wp + j) * cin
            v = vsplat_at(xf, xb + f0)
            a0, b0 = vfma(v, da, a0), vfma(v, db, b0)
            v = vsplat_at(xf, xb + f1)
            a1, b1 = vfma(v, da, a1), vfma(v, db, b1)
            v = vsplat_at(xf, xb + f2)
            a2, b2 = vfma(v, da, a2), vfma(v, db, b2)
            v = vsplat_at(xf, xb + f3)
            a3, b3 = vfma(v, da, a3), vfma(v, db, b3)
    _add_row(acc, r0, rows, o8, o0, a0)
    _add_row(acc, r0 + 1, rows, o8, o0, a1)
    _add_row(acc, r0 + 2, rows, o8, o0, a2)
    _add_row(acc, r0 + 3, rows, o8, o0, a3)
    _add_row(acc, r0, rows, o8, o0 + 8, b0)
    _add_row(acc, r0 + 1, rows, o8, o0 + 8, b1)
    _add_row(acc, r0 + 2, rows, o8, o0 + 8, b2)
    _add_row(acc, r0 + 3, rows, o8, o0 + 8, b3)


@nb.njit(**_JIT)
def _dw_3x2(xf, xbase, dy, acc, r0, rows, cin, wp, h, wd, o8, o0):
    """Weight-gradient rows r0..r0+2, output channels o0..o0+15, summed over one image."""
    f0, f1, f2 = _row_offset(r0, rows, cin, wp), _row_offset(r0 + 1, rows, cin, wp), _row_offset(r0 + 2, rows, cin, wp)
    z = vsplat(0.0, xf)
    a0, a1, a2, b0, b1, b2 = z, z, z, z, z, z
    for i in range(h):
        for j in range(wd):
            d = ((i + 1) * wp + j + 1) * o8 + o0
            da, db = vload(dy, d), vload(dy, d + 8)
            xb = xbase + (i * wp + j) * cin
            v = vsplat_at(xf, xb + f0)
            a0, b0 = vfma(v, da, a0), vfma(v, db, b0)
            v = vsplat_at(xf, xb + f1)
            a1, b1 = vfma(v, da, a1), vfma(v, db, b1)
            v = vsplat_at(xf, xb + f2)
            a2, b2 = vfma(v, da, a2), vfma(v, db, b2)
    _add_row(acc, r0, rows, o8, o0, a0)
    _add_row(acc, r0 + 1, rows, o8, o0, a1)
    _add_row(acc, r0 + 2, rows, o8, o0, a2)
    _add_row(acc, r0, rows, o8, o0 + 8, b0)
    _add_row(acc, r0 + 1, rows, o8, o0 + 8, b1)
    _add_row(acc, r0 + 2, rows, o8, o0 + 8, b2)


@nb.njit(**_JIT)
def _dw_9x1(xf, xbase, dy, acc, r0, rows, cin, wp, h, wd, o8, o0):
    """Weight-gradient rows r0..r0+8 (all nine taps of one input channel), output channels o0..o0+7."""
    z = vsplat(0.0, xf)
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = z, z, z, z, z, z, z, z, z
    c = r0 // 9
    for i in range(h):
        for j in range(wd):
            d = vload(dy, ((i + 1) * wp + j + 1) * o8 + o0)
            xb = xbase + (i * wp + j) * cin + c
            a0 = vfma(vsplat_at(xf, xb), d, a0)
            a1 = vfma(vsplat_at(xf, xb + cin), d, a1)
            a2 = vfma(vsplat_at(xf, xb + 2 * cin), d, a2)
            xb += wp * cin
            a3 = vfma(vsplat_at(xf, xb), d, a3)
            a4 = vfma(vsplat_at(xf, xb + cin), d, a4)
            a5 = vfma(vsplat_at(xf, xb + 2 * cin), d, a5)
            xb += wp * cin
            a6 = vfma(vsplat_at(xf, xb), d, a6)
            a7 = vfma(vsplat_at(xf, xb + cin), d, a7)
            a8 = vfma(vsplat_at(xf, xb + 2 * cin), d, a8)
    # rows of this channel: tap t at row t * cin + c
    _add_row(acc, c, rows, o8, o0, a0)
    _add_row(acc, cin + c, rows, o8, o0, a1)
    _add_row(acc, 2 * cin + c, rows, o8, o0, a2)
    _add_row(acc, 3 * cin + c, rows, o8, o0, a3)
    _add_row(acc, 4 * cin + c, rows, o8, o0, a4)
    _add_row(acc, 5 * cin + c, rows, o8, o0, a5)
    _add_row(acc, 6 * cin + c, rows, o8, o0, a6)
    _add_row(acc, 7 * cin + c, rows, o8, o0, a7)
    _add_row(acc, 8 * cin + c, rows, o8, o0, a8)


@nb.njit(**_JIT)
def _dx_out(g, xs, src, xo, go, mean, gpf, s, sx):
    """Mask dL/d(input) at one pixel by the previous block's ReLU, store it, add it to that block's sums."""
    z = vsplat(0.0, g)
    gm = vsel_gt(vload(xs, xo), z, g, z)
    vstore(gpf, go, gm)
    return vadd(s, gm), vfma(gm, vsub(vload(src, go), mean), sx)


@nb.njit(**_JIT)
def _dx_window(g0, g1, g2, g3, xs, src, xo, go, xrow, grow, c, mean, gpf, s, sx):
    """_dx_out for the four pixels of a window (x offsets from xo, gradient offsets from go)."""
    s, sx = _dx_out(g0, xs, src, xo, go, mean, gpf, s, sx)
    s, sx = _dx_out(g1, xs, src, xo + c, go + c, mean, gpf, s, sx)
    s, sx = _dx_out(g2, xs, src, xo + xrow, go + grow, mean, gpf, s, sx)
    return _dx_out(g3, xs, src, xo + xrow + c, go + grow + c, mean, gpf, s, sx)


@nb.njit(**_JIT)
def _input_grad(dy, wtf, cb, xs, srcf, pmf, gpf, gsf, gxf, kb, k, h, wd, cin, o8):
    """dL/d(input) of image kb: the convolution of its padded dy with the flipped, transposed weights
    (at ``cb`` of ``wtf``), where the previous block's output ``xs`` is positive; stored at ``gpf``, and
    that block's sums of it and of it times (psel - mean) (``srcf``, ``pmf``) at ``gsf``, ``gxf``."""
    hq, wq = h // 2, wd // 2
    wp = wd + 2
    rs, rs8, grow = wp * cin, wp * o8, wd * cin
    c0 = 0
    while c0 < cin:
        z = vsplat(0.0, dy)
        sa, xa = z, z
        mu_a = vload(pmf, k * cin + c0)
        if c0 + 16 <= cin:
            sb, xb = z, z
            mu_b = vload(pmf, k * cin + c0 + 8)
            for i in range(hq):
                for j in range(wq):
                    xo = ((2 * i + 1) * wp + 2 * j + 1) * cin + c0
                    go = ((kb * h + 2 * i) * wd + 2 * j) * cin + c0
                    g = _conv_2x2_2v(dy, (2 * i * wp + 2 * j) * o8, rs8, o8, wtf, cb + c0, cin)
                    sa, xa = _dx_window(g[0], g[1], g[2], g[3], xs, srcf, xo, go, rs, grow, cin, mu_a, gpf, sa, xa)
                    sb, xb = _dx_window(
                        g[4], g[5], g[6], g[7], xs, srcf, xo + 8, go + 8, rs, grow, cin, mu_b, gpf, sb, xb
                    )
            vstore(gsf, kb * cin + c0 + 8, sb)
            vstore(gxf, kb * cin + c0 + 8, xb)
            step = 16
        else:
            for i in range(hq):
                j = 0
                while j < wq:
                    xo = ((2 * i + 1) * wp + 2 * j + 1) * cin + c0
                    go = ((kb * h + 2 * i) * wd + 2 * j) * cin + c0
                    db = (2 * i * wp + 2 * j) * o8
                    if j + 2 <= wq:  # two windows side by side: eight accumulators
                        g = _conv_2x4_1v(dy, db, rs8, o8, wtf, cb + c0, cin)
                        sa, xa = _dx_window(g[0], g[1], g[2], g[3], xs, srcf, xo, go, rs, grow, cin, mu_a, gpf, sa, xa)
                        two = 2 * cin
                        sa, xa = _dx_window(
                            g[4], g[5], g[6], g[7], xs, srcf, xo + two, go + two, rs, grow, cin, mu_a, gpf, sa, xa
                        )
                        j += 2
                    else:
                        g4 = _conv_2x2_1v(dy, db, rs8, o8, wtf, cb + c0, cin)
                        sa, xa = _dx_window(
                            g4[0], g4[1], g4[2], g4[3], xs, srcf, xo, go, rs, grow, cin, mu_a, gpf, sa, xa
                        )
                        j += 1
            step = 8
        vstore(gsf, kb * cin + c0, sa)
        vstore(gxf, kb * cin + c0, xa)
        c0 += step


@nb.njit(**_JIT)
def block_backward(  # pragma: no cover - numba
    lo,
    hi,
    chunks,
    src,
    prev_scale,
    prev_bias,
    prev_mean,
    w,
    wt,
    up,
    psel,
    scale,
    bias,
    coef,
    grad,
    head,
    dw,
    gprev,
    gsum,
    gxsum,
):
    """Weight gradient, and the previous block's masked output gradient, for items lo..hi-1 of K * chunks.

    src, prev_scale, prev_bias, w, up, psel as in ``block_forward``; scale, bias [K, O8]
    of this block's output; coef [3, K, O8]: t = gamma / sigma, c1, c0 of dL/dy = t * g
    at the pooled position + c1 * y + c0; ``grad`` the head's gradient [K, B, 1, 1, O8]
    (``head`` = 1 / (Hq * Wq), masked here) or dL/d(output) already masked [K, B, Hq, Wq,
    O8] (``head`` 0). Item (k, chunk) covers model k's images of that chunk; dw [K *
    chunks, 9 * C * O8] gets its weight gradient (summed by the caller). With ``wt`` [K,
    9, O8, C] (the taps flipped, channels swapped) non-empty (a later block), gprev [K, B,
    H, W, C] gets dL/d(input) where the previous block's output is positive (else 0), and
    gsum, gxsum [K, B, C] that block's sums of it and of it times (psel - prev_mean).
    """
    batch, hq, wq, o8 = psel.shape[1], psel.shape[2], psel.shape[3], psel.shape[4]
    cin = w.shape[2]
    h, wd = 2 * hq, 2 * wq
    hp, wp = h + 2, wd + 2
    rs, rs8 = wp * cin, wp * o8
    rows = 9 * cin
    direct = prev_scale.shape[1] == 0
    want_dx = wt.shape[0] > 0
    srcf, wf, wtf, uf = src.reshape(-1), w.reshape(-1), wt.reshape(-1), up.reshape(-1)
    psf, pbf, pmf = prev_scale.reshape(-1), prev_bias.reshape(-1), prev_mean.reshape(-1)
    pf, cf, bf, gf = psel.reshape(-1), scale.reshape(-1), bias.reshape(-1), grad.reshape(-1)
    tf, c1f, c0f = coef[0].reshape(-1), coef[1].reshape(-1), coef[2].reshape(-1)
    dwf, gpf, gsf, gxf = dw.reshape(-1), gprev.reshape(-1), gsum.reshape(-1), gxsum.reshape(-1)
    per_chunk = (batch + chunks - 1) // chunks
    xs = np.zeros(hp * rs, dtype=src.dtype)  # a later block's input image inside a zero border
    dy = np.zeros(hp * rs8, dtype=src.dtype)  # one image's dL/dy inside a zero border
    acc = np.zeros(rows * o8, dtype=src.dtype)
    for kc in range(lo, hi):
        k = kc // chunks
        b_start = (kc % chunks) * per_chunk
        b_stop = min(batch, b_start + per_chunk)
        acc[:] = 0.0
        wbase = k * 9 * cin * o8
        for b in range(b_start, b_stop):
            kb = k * batch + b
            if direct:
                xf, xbase = srcf, kb * hp * rs
            else:
                _input_image(srcf, kb, k, psf, pbf, xs, h, wd, cin)
                xf, xbase = xs, 0
            # 1. dL/dy of the image, window by window
            o0 = 0
            while o0 < o8:
                two = o0 + 16 <= o8
                ua, c1a, c0a = vload(uf, k * o8 + o0), vload(c1f, k * o8 + o0), vload(c0f, k * o8 + o0)
                for i in range(hq):
                    for j in range(wq):
                        do = ((2 * i + 1) * wp + 2 * j + 1) * o8 + o0
                        xb = xbase + (2 * i * wp + 2 * j) * cin
                        ga = _g_window(gf, pf, cf, bf, tf, kb, k, i, j, o0, hq, wq, o8, head)
                        if two:
                            y = _conv_2x2_2v(xf, xb, rs, cin, wf, wbase + o0, o8)
                            _dy_window(y[0], y[1], y[2], y[3], ua, ga, c1a, c0a, dy, do, rs8, o8)
                            gb = _g_window(gf, pf, cf, bf, tf, kb, k, i, j, o0 + 8, hq, wq, o8, head)
                            co = k * o8 + o0 + 8
                            ub, c1b, c0b = vload(uf, co), vload(c1f, co), vload(c0f, co)
                            _dy_window(y[4], y[5], y[6], y[7], ub, gb, c1b, c0b, dy, do + 8, rs8, o8)
                        else:
                            y = _conv_2x2_1v(xf, xb, rs, cin, wf, wbase + o0, o8)
                            _dy_window(y[0], y[1], y[2], y[3], ua, ga, c1a, c0a, dy, do, rs8, o8)
                o0 += 16 if two else 8
            # 2. weight gradient: acc[r, o] += sum over pixels of x[pixel + offset(r)] * dy[pixel, o]
            o0 = 0
            while o0 < o8:
                if o0 + 16 <= o8:
                    if rows % 4 == 0:
                        for r0 in range(0, rows, 4):
                            _dw_4x2(xf, xbase, dy, acc, r0, rows, cin, wp, h, wd, o8, o0)
                    else:
                        for r0 in range(0, rows, 3):
                            _dw_3x2(xf, xbase, dy, acc, r0, rows, cin, wp, h, wd, o8, o0)
                    o0 += 16
                else:
                    for r0 in range(0, rows, 9):
                        _dw_9x1(xf, xbase, dy, acc, r0, rows, cin, wp, h, wd, o8, o0)
                    o0 += 8
            # 3. input gradient, masked by the previous block's ReLU, and that block's batch-norm sums
            if want_dx:
                _input_grad(dy, wtf, k * 9 * o8 * cin, xs, srcf, pmf, gpf, gsf, gxf, kb, k, h, wd, cin, o8)
        dwf[kc * rows * o8 : (kc + 1) * rows * o8] = acc


@nb.njit(**_JIT)
def pad_input(lo, hi, x, out):  # pragma: no cover - numba
    """Images lo..hi-1 of x [K, B, C, H, W] (any strides) into out [K, B, H+2, W+2, C] inside a zero border."""
    batch, cin, h, wd = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    for kb in range(lo, hi):
        k, b = kb // batch, kb % batch
        out[k, b, 0] = 0.0
        out[k, b, h + 1] = 0.0
        for i in range(h):
            out[k, b, i + 1, 0] = 0.0
            out[k, b, i + 1, wd + 1] = 0.0
            for j in range(wd):
                for c in range(cin):
                    out[k, b, i + 1, j + 1, c] = x[k, b, c, i, j]
