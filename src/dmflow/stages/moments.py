"""Rule of ``rules/moments.smk``: ``moments`` computes, once per fit store, everything the fit jobs
need (``dmflow.lasso.moments.CountMoments`` of the fit and the validation rows); ``open_moments``
memory-maps them for a fit job, checking that they belong to its store.

The folder ``moments/{alpha}/`` holds one ``.npy`` per entry of ``MOMENT_ARRAYS`` and part
(the centred Gram sums Xc^T Xc [n, n] and cross moments [T, n] float32, the per-target means
and sums of squares float64 [T], the masks' column sums float64 [n]) and ``manifest.json``,
written last: the store's manifest sha256, the validation split (seed, ``fit.val_fraction``),
shapes, dtypes and the sha256 of every array, the kernels that computed them
(``dmflow.core.kernels``), and the largest and smallest non-null eigenvalues of the centred
Gram of the fit rows and of all rows (``top_eigenvalue``, ``bottom_eigenvalue``: the solvers'
step lengths, computed once here, not in every job; a manifest without the smallest ones,
from an older dmflow, has them computed in each fit job).
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from dmflow.core import kernels
from dmflow.core.io import atomic_path, atomic_save_json, load_json, sha256_file, sha256_files
from dmflow.lasso.accumulate import CROSS_TARGETS, GRAM_COLS, count_moments
from dmflow.lasso.moments import CountMoments
from dmflow.lasso.path import DENSE_MAX_N
from dmflow.lasso.settings import split_validation_rows
from dmflow.lasso.spectrum import bottom_eigenvalue, top_eigenvalue
from dmflow.lasso.stored_gram import UNION_BYTES
from dmflow.lasso.working_sets import BUCKET_BYTES, CD_BUFFER_ENTRIES
from dmflow.stages.collect import open_store
from dmflow.store.schema import StoreError, usable_rows

MIN_FIT_ROWS = 2
"""The fewest fit rows the moments fit (one gives a zero Gram; ``dmflow.config`` checks the same number)."""

log = logging.getLogger(__name__)

PARTS = ("fit", "val")
MOMENT_ARRAYS = {  # name -> (dtype, axes): one of each per part
    "gram": (np.float32, ("n", "n")),
    "cross": (np.float32, ("T", "n")),
    "mean_y": (np.float64, ("T",)),
    "syy": (np.float64, ("T",)),
    "sum_x": (np.float64, ("n",)),
}


FORMAT = 2
"""The moments manifest's format: 2 carries its own checksum (``dmflow.core.io.SEAL``)."""
REBUILD = "rerun the workflow (the moments rule rebuilds it)"

PROCESS_MB = 1024
"""A job's memory besides its arrays (the interpreter with torch, numpy and scipy loaded), in the rules' mem_mb."""


def moments_bytes(n: int, num_targets: int, *, block_rows: int = 8192) -> int:
    """Peak memory of the moments job: two Grams and two cross moments in float32, one int32 product of
    ``GRAM_COLS`` columns, the int32 sums of an int8 cross product [4 x ``CROSS_TARGETS``, n], and one row
    block (packed, unpacked, its int8 and float32 copies, its margins and their int8 digits)."""
    products = 4 * n * min(n, GRAM_COLS) + 16 * n * min(num_targets, CROSS_TARGETS)
    return 2 * 4 * (n * n + n * num_targets) + products + block_rows * (7 * n + n // 8 + 24 * num_targets)


def fit_bytes(n: int, targets_per_job: int, *, threads: int = 1, device: str = "cpu") -> int:
    """Peak memory of a fit job at most. Up to ``DENSE_MAX_N`` features the dense reference path runs:
    float64 centred Grams of the fit, validation and all rows and float32 copies (~32 n^2 bytes). Beyond,
    the working sets: both memory-mapped Grams, had every feature joined a working set (8 n^2; the fit rows'
    also serves their dense solves), a float32 centred Gram of all rows once some target's refit working set
    passes ``DENSE_SHARE`` of the features (4 n^2), and per target group (up to one per thread) a target's
    G[A, A] for coordinate descent (``CD_BUFFER_ENTRIES``, on the CPU) or, on another ``device`` (or ``auto``:
    either), G[U, U] of its working sets' union and one bucket of padded Grams. Plus the targets' O(n x
    targets) arrays (cross moments, weights, products, path statistics)."""
    if n <= DENSE_MAX_N:
        return 32 * n * n + 96 * n * targets_per_job
    per_group = 8 * CD_BUFFER_ENTRIES
    if device != "cpu":
        per_group = max(per_group, UNION_BYTES + 2 * BUCKET_BYTES)
    return 12 * n * n + max(1, threads) * per_group + 96 * n * targets_per_job


def check_memory(needed: int, mem_mb: int | None, what: str) -> None:
    """Refuse, in one line and before any work, a job that needs more memory than it was given."""
    given = []
    if mem_mb:
        given.append((mem_mb * 2**20, f"the {mem_mb} MB this job was given (resources.mem_mb)"))
    try:
        given.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"))
    except (ValueError, OSError):  # pragma: no cover - no sysconf
        pass
    for limit, name in given:
        if needed > limit:
            raise StoreError(
                f"{what} need ~{needed / 2**30:.1f} GB, more than {name}; give the job more memory, "
                "or run it where there is more"
            )


def moments(
    store: Path,
    out_dir: Path,
    *,
    val_fraction: float,
    seed: int,
    threads: int = 1,
    mem_mb: int | None = None,
    device: str = "cpu",
) -> dict:
    """Compute the fit store's moments for its fit and validation rows on ``threads`` torch threads (their
    products on ``device``) and write them atomically; returns the manifest. The store is read in row blocks (its masks unpacked a
    block at a time); ``mem_mb`` (the job's memory) is checked against what they need, before any work."""
    torch.set_num_threads(max(1, int(threads)))
    out_dir = Path(out_dir)
    view = open_store(store)
    m, n = view.masks.shape
    t = view.manifest["num_targets"]
    check_memory(moments_bytes(n, t), mem_mb, f"moments of n={n} training examples and T={t} targets")
    rows = usable_rows(view.status)
    if len(rows) < 3:
        raise StoreError(f"{store}: only {len(rows)} usable rows (every other model diverged); nothing to fit")
    fit_rows, val_rows = split_validation_rows(rows, val_fraction, seed=seed, alpha=view.manifest["alpha"])
    if len(fit_rows) < MIN_FIT_ROWS:  # the config check counts every model; diverged ones may leave too few
        raise StoreError(
            f"{store}: {len(rows)} usable rows ({m - len(rows)} diverged) less {len(val_rows)} validation rows "
            f"leave {len(fit_rows)} to fit; at least {MIN_FIT_ROWS} are needed: lower fit.val_fraction or train more models"
        )
    parts = dict(zip(PARTS, count_moments(view.masks, view.margins[:, 0, :], [fit_rows, val_rows], device=device)))
    every = {"fit": parts["fit"], "all": parts["fit"].combine(parts["val"])}
    lips = {key: top_eigenvalue(mom) for key, mom in every.items()}
    mus = {key: bottom_eigenvalue(mom, lips[key]) for key, mom in every.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    arrays = {}
    with ExitStack() as renames:
        for part, mom in parts.items():
            values = {
                "gram": mom.grams[0],
                "cross": mom.cross,
                "mean_y": mom.mean_y,
                "syy": mom.syy,
                "sum_x": mom.sum_x,
            }
            for name, value in values.items():
                tmp = renames.enter_context(atomic_path(out_dir / f"{name}_{part}.npy", ".npy"))
                np.save(tmp, np.ascontiguousarray(value, dtype=MOMENT_ARRAYS[name][0]))
                arrays[f"{name}_{part}"] = tmp
    manifest = {
        "format": FORMAT,
        "store": os.fspath(store),
        "store_manifest_sha256": sha256_file(Path(store) / "manifest.json"),
        "alpha": view.manifest["alpha"],
        "seed": seed,
        "val_fraction": val_fraction,
        "num_train": n,
        "num_targets": t,
        "counts": {part: mom.count for part, mom in parts.items()},
        "top_eigenvalue": lips,
        "bottom_eigenvalue": mus,
        "kernels": {kind: name for kind, name in kernels.chosen().items() if kind in ("gram", "cross")}
        if torch.device(device).type == "cpu"
        else {"gram": f"float32 on {device}", "cross": f"float32 on {device}"},
        "arrays": {
            name: {
                "shape": list(np.load(out_dir / f"{name}.npy", mmap_mode="r").shape),
                "dtype": np.dtype(MOMENT_ARRAYS[name.rsplit("_", 1)[0]][0]).name,
                "sha256": digest,
            }
            for name, digest in zip(
                arrays, sha256_files((out_dir / f"{name}.npy" for name in arrays), workers=torch.get_num_threads())
            )
        },
    }
    atomic_save_json(out_dir / "manifest.json", manifest)
    log.info("moments of %s: %d fit and %d validation rows, n=%d, T=%d", store, len(fit_rows), len(val_rows), n, t)
    return manifest


def open_moments(path: Path, *, store_manifest: Path | None = None) -> tuple[CountMoments, CountMoments, dict]:
    """Memory-map a moments folder: (fit rows' moments, validation rows' moments, manifest).

    Every array's sha256 and shape must match the manifest, and, given ``store_manifest``,
    the moments must come from that store as it is now; otherwise StoreError (one line).
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise StoreError(f"{path}: no manifest.json (the moments are incomplete; rerun the moments rule)")
    manifest = load_json(manifest_path, rebuild=REBUILD)
    if manifest.get("format") != FORMAT:
        raise StoreError(
            f"{manifest_path}: moments format {manifest.get('format')}, this dmflow reads {FORMAT}; "
            f"remove it and {REBUILD}"
        )
    if store_manifest is not None and sha256_file(store_manifest) != manifest["store_manifest_sha256"]:
        raise StoreError(
            f"{path}: these moments were computed from another version of the store "
            f"{Path(store_manifest).parent} (its manifest's sha256 differs); rerun the moments rule"
        )
    n, t = manifest["num_train"], manifest["num_targets"]
    sizes = {"n": n, "T": t}
    files = {f"{name}_{part}": path / f"{name}_{part}.npy" for part in PARTS for name in MOMENT_ARRAYS}
    for key, file in files.items():
        if key not in manifest["arrays"] or not file.is_file():
            raise StoreError(f"{file}: missing from the moments (rerun the moments rule)")
    for (key, file), digest in zip(files.items(), sha256_files(files.values(), workers=torch.get_num_threads())):
        if digest != manifest["arrays"][key]["sha256"]:
            raise StoreError(f"{file}: sha256 differs from manifest.json (the moments were modified or corrupted)")
    arrays = {}
    for part in PARTS:
        for name, (dtype, axes) in MOMENT_ARRAYS.items():
            file = files[f"{name}_{part}"]
            arrays[f"{name}_{part}"] = np.load(file, mmap_mode="r", allow_pickle=False)
            want = [sizes[a] for a in axes]
            if list(arrays[f"{name}_{part}"].shape) != want or arrays[f"{name}_{part}"].dtype != dtype:
                raise StoreError(
                    f"{file}: {arrays[f'{name}_{part}'].dtype} {list(arrays[f'{name}_{part}'].shape)}, "
                    f"expected {np.dtype(dtype).name} {want}"
                )
    fit, val = (
        CountMoments(
            manifest["counts"][part],
            (arrays[f"gram_{part}"],),
            np.asarray(arrays[f"sum_x_{part}"]),
            np.asarray(arrays[f"mean_y_{part}"]),
            arrays[f"cross_{part}"],
            np.asarray(arrays[f"syy_{part}"]),
            manifest["top_eigenvalue"]["fit"] if part == "fit" else None,
            manifest.get("bottom_eigenvalue", {}).get("fit") if part == "fit" else None,
        )
        for part in PARTS
    )
    return fit, val, manifest
