"""The moments stage's products, each kernel side by side, the one the dispatch point chose, and count_moments.

For each n, on a block of ``--rows`` mask rows (exactly n/2 ones each, as an alpha = 0.5
store holds) and ``--targets`` centred N(0, 1) margins:

- **Gram**: ``add_gram(..., upper=True)`` (the upper block triangle of X^T X) as float32
  and as int8 products, checked to give identical counts;
- **cross**: ``add_cross``, the cross moments X^T Yc [T, n], as one float32 product and
  as int8 products of four fixed-point digits per margin, each one's largest error against
  float64 sums;
- **chosen**: what ``dmflow.core.kernels`` picks on this machine (``gram_kernel``,
  ``cross_kernel``: forced by ``DMFLOW_KERNELS``, else measured here);
- **moments**: ``count_moments`` on a store of ``--blocks`` such blocks (fit and
  validation rows, as the moments job runs it, with the chosen kernels) against the time
  of its float32 products alone at the same shapes (the Gram's upper triangle and the
  cross product, per block): the goal is a ratio of at most 2.

float32 times are the best of 3 after a warm-up. A kernel is first run once on 1/64 of the
rows (and, for the cross moments, at most 64 targets); if that, scaled, exceeds ``LOSES``
times float32, the scaled time is reported (it loses either way; an AVX2-only CPU's int8
product is tens to hundreds of times slower). Exactness and errors are checked on that part.
Run with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` to cap a newer CPU to AVX2;
the **caps** cell records them.

Run:  python benchmarks/gram_products.py [--sizes 1000 2000 4000] [--rows 8192] [--targets 1000] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from dmflow.core import kernels
from dmflow.lasso.accumulate import (
    FIXED_POINT_BITS,
    GramScratch,
    add_cross,
    add_gram,
    count_moments,
    cross_kernel,
    gram_kernel,
)

import record

SECTION = "gram_products.py: kernels side by side"
HEADER = (
    "threads",
    "caps",
    "n",
    "rows",
    "T",
    "Gram float32 s",
    "Gram int8 s",
    "int8 / float32",
    "exact",
    "Gram chosen",
    "cross float32 s",
    "cross int8 s",
    "cross int8 / float32",
    "float32 error",
    "int8 error",
    "cross chosen",
    "moments s",
    "float32 products s",
    "moments / products",
)
NOTES = """`python benchmarks/gram_products.py` (see its docstring): one block of **rows** mask rows (n/2 ones each) and
**T** centred margins. **Gram**: the upper block triangle of X^T X (`add_gram(..., upper=True)`) as float32 or int8
products, seconds per block, and **int8 / float32** the int8 time over float32's (above 1: int8 is slower);
**exact**: identical counts. **cross**: X^T Yc [T, n] (`add_cross`) as one float32 product or int8 products of
four fixed-point digits, with each one's largest error against float64 sums over the largest sum. **chosen**: what
`dmflow.core.kernels` picked here. **moments**: `count_moments` on 2 blocks (fit and validation rows) with the
chosen kernels, against the time of its float32 products alone (goal: at most 2x). **caps**: ATEN_CPU_CAPABILITY /
ONEDNN_MAX_CPU_ISA of the run (`-`: none, the CPU's own ISA)."""
LOSES = 3.0


def timed(run, repeats: int = 3) -> float:
    """Best seconds of ``run()`` over ``repeats`` after a warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def timed_or_scaled(full, small, scale: float, base: float) -> float:
    """Seconds of ``full()``: first one run of ``small()``, a ``1 / scale`` part of its work; if that, scaled, exceeds
    LOSES x ``base``, the scaled time (a product's time is linear in its rows and targets), else ``full``'s best."""
    start = time.perf_counter()
    small()
    guess = (time.perf_counter() - start) * scale
    if guess > LOSES * base:
        return guess
    return timed(full)


def caps() -> str:
    set_ = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)]
    return " ".join(set_) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--targets", type=int, default=1000, help="margins of the cross moments")
    parser.add_argument("--threads", type=int, default=2)
    record.add_arguments(parser)
    args = parser.parse_args()
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, SECTION, HEADER)
    torch.set_num_threads(args.threads)
    machine = record.machine_cells()
    print(f"moments products: {args.rows} rows, T={args.targets}, {args.threads} threads; {machine[2]}, {machine[4]}")
    print(f"caps: {caps()}; forced: {os.environ.get(kernels.ENV) or 'nothing'}")
    for n in args.sizes:
        cells = one_size(args, n)
        if args.record:
            record.append_row(results_file, SECTION, HEADER, [*machine, *cells], notes=NOTES)
    if args.record:
        print(f"recorded {len(args.sizes)} rows in {results_file} under '## {SECTION}'")


def one_size(args: argparse.Namespace, n: int) -> list[str]:
    rows, t = args.rows, args.targets
    rng = np.random.default_rng(n)
    x = rng.permuted(np.broadcast_to(np.arange(n) < n // 2, (rows, n)), axis=1)
    scratch = GramScratch(rows, n, t)
    grams = {False: torch.zeros((n, n)), True: torch.zeros((n, n))}

    def gram_on(int8: bool):
        def run(r: int) -> None:
            grams[int8].zero_()
            add_gram(grams[int8], x[:r], scratch=scratch, upper=True, int8=int8)

        return run

    part = max(16, rows // 64)
    g32 = timed(lambda: gram_on(False)(rows))
    g8 = timed_or_scaled(lambda: gram_on(True)(rows), lambda: gram_on(True)(part), rows / part, g32)
    gram_on(False)(part)
    gram_on(True)(part)
    exact = bool(torch.equal(grams[False], grams[True]))

    yc = rng.standard_normal((rows, t))
    yc -= yc.mean(0)
    step = np.abs(yc).max(0) / 2**FIXED_POINT_BITS
    few = min(t, 64)  # targets of the scaled probe and of the error check
    reference = yc[:part, :few].T @ x[:part].astype(np.float64)
    crosses = {False: np.zeros((t, n), np.float32), True: np.zeros((t, n), np.float32)}

    def cross_on(int8: bool):
        def run(r: int, targets: int = t) -> None:
            crosses[int8][:targets] = 0
            add_cross(crosses[int8][:targets], x[:r], yc[:r, :targets], step=step[:targets], int8=int8, scratch=scratch)

        return run

    c32 = timed(lambda: cross_on(False)(rows))
    c8 = timed_or_scaled(lambda: cross_on(True)(rows), lambda: cross_on(True)(part, few), rows / part * t / few, c32)
    errors = {}
    for int8 in (False, True):
        cross_on(int8)(part, few)
        errors[int8] = float(np.abs(crosses[int8][:few] - reference).max() / np.abs(reference).max())
    chosen_gram, chosen_cross = gram_kernel(rows, n), cross_kernel(rows, n, t)

    # count_moments on two blocks (fit rows, then validation rows), with the chosen kernels
    masks = np.concatenate([x, x[::-1]])
    margins = np.concatenate([yc, yc[::-1]]).astype(np.float32)
    start = time.perf_counter()
    count_moments(masks, margins, [np.arange(rows), np.arange(rows, 2 * rows)], block_rows=rows)
    moments_s = time.perf_counter() - start
    products_s = 2 * (g32 + c32)
    print(
        f"n={n:6d}: Gram float32 {g32:.3f} s, int8 {g8:.3f} s ({g8 / g32:.2f}x), exact {exact}, chosen {chosen_gram}; "
        f"cross float32 {c32:.3f} s, int8 {c8:.3f} s ({c8 / c32:.2f}x), errors {errors[False]:.1e} / "
        f"{errors[True]:.1e}, chosen {chosen_cross}; count_moments {moments_s:.2f} s against float32 products "
        f"{products_s:.2f} s ({moments_s / products_s:.2f}x)",
        flush=True,
    )
    return [
        str(args.threads),
        caps(),
        str(n),
        str(rows),
        str(t),
        record.fmt(g32, ".3f"),
        record.fmt(g8, ".3f"),
        record.fmt(g8 / g32, ".2f"),
        str(exact),
        chosen_gram,
        record.fmt(c32, ".3f"),
        record.fmt(c8, ".3f"),
        record.fmt(c8 / c32, ".2f"),
        record.fmt(errors[False], ".1e"),
        record.fmt(errors[True], ".1e"),
        chosen_cross,
        record.fmt(moments_s, ".2f"),
        record.fmt(products_s, ".2f"),
        record.fmt(moments_s / products_s, ".2f"),
    ]


if __name__ == "__main__":
    main()
