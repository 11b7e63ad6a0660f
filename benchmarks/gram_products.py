"""The moments stage's products on a block of mask rows, each against its alternative, side by side.

``dmflow.lasso.moments.add_gram`` adds X^T X of a block of 0/1 mask rows with
``torch._int_mm`` (int8 inputs, int32 sums: AMX or VNNI units where the CPU has them)
and falls back to a float32 product, which is exact too (every partial sum is an
integer below 2^24). This script times both on the same blocks (rows of exactly n/2
ones, as an alpha = 0.5 store holds), checks they agree exactly, and prints the ratio:
the int8 path is worth keeping only where it wins by 1.15x or more.

A second table times what ``count_moments`` runs per block: the Gram's upper block
triangle (``add_gram(..., upper=True)``) against the whole product, and the cross
moments of ``--targets`` centred margins (``add_cross``) as int8 products of fixed-point
digits against one float32 product, with each one's largest error against float64 sums.

Run:  python benchmarks/gram_products.py [--sizes 2000 4000 8000] [--rows 8192] [--targets 2000] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dmflow.lasso.moments import FIXED_POINT_BITS, GramScratch, add_cross, add_gram

import record

HEADER = ("threads", "n", "rows", "int8 GOP/s", "float32 GOP/s", "int8 / float32", "exact")
NOTES = """One block of **rows** mask rows (exactly n/2 ones each) times its transpose, `X^T X` [n, n]
(`python benchmarks/gram_products.py`): **int8** is `add_gram` (`torch._int_mm`, int32 sums), **float32** the
same product on float32 copies (the fallback); GOP/s count 2 rows n^2 operations, best of 3 after a warm-up.
**exact**: the two Grams are equal."""
SECTION_MOMENTS = "gram_products.py: a block of count_moments"
HEADER_MOMENTS = (
    "threads",
    "n",
    "rows",
    "T",
    "Gram whole s",
    "Gram upper s",
    "whole / upper",
    "cross float32 s",
    "cross int8 s",
    "float32 / int8",
    "float32 error",
    "int8 error",
)
NOTES_MOMENTS = """What `count_moments` runs per block of **rows** mask rows and **T** margins (N(0, 1), centred;
`python benchmarks/gram_products.py`), best of 3 after a warm-up: **Gram whole / upper**: `add_gram` with int8
products over all of X^T X, or its upper block triangle (`upper=True`; `mirror_upper` fills the rest once per
job). **cross**: `add_cross`, the cross moments X^T Yc [T, n] as one float32 product or as int8 products of the
margins' fixed-point digits (2^-26 of each target's spread); **error**: its largest deviation from float64 sums,
over the largest of them."""


def best_of(product, gram: torch.Tensor, x: np.ndarray, repeats: int = 3) -> float:
    """Best seconds of ``product(gram, x)`` over ``repeats`` runs after a warm-up; ``gram`` ends holding X^T X."""
    times = []
    for _ in range(repeats + 1):
        gram.zero_()
        start = time.perf_counter()
        product(gram, x)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def float32_gram(gram: torch.Tensor, x: np.ndarray) -> None:
    dense = torch.from_numpy(x).to(torch.float32)
    gram.addmm_(dense.T, dense)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--targets", type=int, default=2000, help="margins of the cross moments")
    parser.add_argument("--threads", type=int, default=2)
    record.add_arguments(parser)
    args = parser.parse_args()
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, "gram_products.py", HEADER)
        record.check_section(results_file, SECTION_MOMENTS, HEADER_MOMENTS)
    torch.set_num_threads(args.threads)
    machine = record.machine_cells()
    print(f"gram products: {args.rows} rows, {args.threads} threads; {machine[2]}, {machine[4]}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        base = np.arange(n) < n // 2
        x = rng.permuted(np.broadcast_to(base, (args.rows, n)), axis=1)
        a, b = torch.zeros((n, n)), torch.zeros((n, n))
        t_int8 = best_of(add_gram, a, x)
        t_f32 = best_of(float32_gram, b, x)
        exact = bool(torch.equal(a, b))
        ops = 2 * args.rows * n * n / 1e9
        ratio = t_f32 / t_int8
        print(
            f"n={n:6d}: int8 {ops / t_int8:8.0f} GOP/s, float32 {ops / t_f32:8.0f} GOP/s, "
            f"int8 / float32 {ratio:.2f}x, exact {exact}",
            flush=True,
        )
        if args.record:
            cells = [
                str(args.threads),
                str(n),
                str(args.rows),
                record.fmt(ops / t_int8, ".0f"),
                record.fmt(ops / t_f32, ".0f"),
                record.fmt(ratio, ".2f"),
                str(exact),
            ]
            record.append_row(results_file, "gram_products.py", HEADER, [*machine, *cells], notes=NOTES)
        moments_block(args, n, x, results_file, machine)
    if args.record:
        print(
            f"recorded {2 * len(args.sizes)} rows in {results_file} under '## gram_products.py' and '## {SECTION_MOMENTS}'"
        )


def moments_block(args: argparse.Namespace, n: int, x: np.ndarray, results_file, machine: list[str]) -> None:
    """The second table's row for one n: upper triangle against the whole Gram, int8 against float32 cross."""
    scratch = GramScratch(args.rows, n, args.targets)
    whole = best_of(lambda g, xx: add_gram(g, xx, scratch=scratch), torch.zeros((n, n)), x)
    upper = best_of(lambda g, xx: add_gram(g, xx, scratch=scratch, upper=True), torch.zeros((n, n)), x)
    yc = np.random.default_rng(n).standard_normal((args.rows, args.targets))
    yc -= yc.mean(0)
    step = np.abs(yc).max(0) / 2**FIXED_POINT_BITS
    exact = yc.T @ x.astype(np.float64)
    seconds, errors = {}, {}
    for int8 in (False, True):
        cross = np.zeros((args.targets, n), np.float32)
        times = []
        for _ in range(4):
            cross[:] = 0
            start = time.perf_counter()
            add_cross(cross, x, yc, step=step, int8=int8, scratch=scratch)
            times.append(time.perf_counter() - start)
        seconds[int8], errors[int8] = min(times[1:]), np.abs(cross - exact).max() / np.abs(exact).max()
    print(
        f"n={n:6d}: Gram whole {whole:.3f} s, upper {upper:.3f} s ({whole / upper:.2f}x); cross T={args.targets} "
        f"float32 {seconds[False]:.3f} s, int8 {seconds[True]:.3f} s ({seconds[False] / seconds[True]:.2f}x), "
        f"errors {errors[False]:.1e} / {errors[True]:.1e}",
        flush=True,
    )
    if args.record:
        cells = [
            str(args.threads),
            str(n),
            str(args.rows),
            str(args.targets),
            record.fmt(whole, ".3f"),
            record.fmt(upper, ".3f"),
            record.fmt(whole / upper, ".2f"),
            record.fmt(seconds[False], ".3f"),
            record.fmt(seconds[True], ".3f"),
            record.fmt(seconds[False] / seconds[True], ".2f"),
            record.fmt(errors[False], ".1e"),
            record.fmt(errors[True], ".1e"),
        ]
        record.append_row(results_file, SECTION_MOMENTS, HEADER_MOMENTS, [*machine, *cells], notes=NOTES_MOMENTS)


if __name__ == "__main__":
    main()
