"""The moments stage's Gram product: exact int8 counts (``add_gram``) against float32, side by side.

``dmflow.lasso.moments.add_gram`` adds X^T X of a block of 0/1 mask rows with
``torch._int_mm`` (int8 inputs, int32 sums: AMX or VNNI units where the CPU has them)
and falls back to a float32 product, which is exact too (every partial sum is an
integer below 2^24). This script times both on the same blocks (rows of exactly n/2
ones, as an alpha = 0.5 store holds), checks they agree exactly, and prints the ratio:
the int8 path is worth keeping only where it wins by 1.15x or more.

Run:  python benchmarks/gram_products.py [--sizes 2000 4000 8000] [--rows 8192] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dmflow.lasso.moments import add_gram

import record

HEADER = ("threads", "n", "rows", "int8 GOP/s", "float32 GOP/s", "int8 / float32", "exact")
NOTES = """One block of **rows** mask rows (exactly n/2 ones each) times its transpose, `X^T X` [n, n]
(`python benchmarks/gram_products.py`): **int8** is `add_gram` (`torch._int_mm`, int32 sums), **float32** the
same product on float32 copies (the fallback); GOP/s count 2 rows n^2 operations, best of 3 after a warm-up.
**exact**: the two Grams are equal."""


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
    parser.add_argument("--threads", type=int, default=2)
    record.add_arguments(parser)
    args = parser.parse_args()
    results_file = record.results_file(parser, args)
    if args.record:
        record.check_section(results_file, "gram_products.py", HEADER)
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
    if args.record:
        print(f"recorded {len(args.sizes)} rows in {results_file} under '## gram_products.py'")


if __name__ == "__main__":
    main()
