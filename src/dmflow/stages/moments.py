"""Rule of ``rules/moments.smk``: ``moments`` computes, once per fit store, everything the fit jobs
need (``dmflow.lasso.moments.CountMoments`` of the fit and the validation rows) and writes them in the
format ``dmflow.store.formats`` declares (``MOMENT_ARRAYS`` per part of ``MOMENT_PARTS``, read back
by ``open_moments``): the arrays first, ``manifest.json`` last, with the store's manifest sha256, the
validation split (seed, ``fit.val_fraction``), shapes, dtypes and the sha256 of every array, the kernels
that computed them (``dmflow.core.kernels``), and the largest and smallest non-null eigenvalues of the
centred Gram of the fit rows and of all rows (``top_eigenvalue``, ``bottom_eigenvalue``: the solvers'
step lengths, computed once here, not in every job).
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from dmflow.core import kernels, provenance
from dmflow.core.budgets import check_memory, moments_bytes
from dmflow.core.device import resolve_device
from dmflow.core.errors import StoreError
from dmflow.core.io import atomic_path, atomic_save_json, sha256_file, sha256_files
from dmflow.core.layout import alpha_dir
from dmflow.core.progress import Progress
from dmflow.core.schema import defaults
from dmflow.lasso.accumulate import count_moments
from dmflow.lasso.settings import split_validation_rows
from dmflow.lasso.spectrum import bottom_eigenvalue, top_eigenvalue
from dmflow.store.formats import MOMENT_ARRAYS, MOMENT_PARTS, MOMENTS_FORMAT, open_store
from dmflow.store.schema import usable_rows

MIN_FIT_ROWS = 2
"""The fewest fit rows the moments fit (one gives a zero Gram; ``dmflow.config`` checks the same number)."""

log = logging.getLogger(__name__)
_FIT = defaults("fit")


def moments(
    store: Path,
    out_dir: Path,
    *,
    val_fraction: float,
    seed: int,
    threads: int | None = None,
    mem_mb: int | None = None,
    device: str | None = None,
) -> dict:
    """Compute the fit store's moments for its fit and validation rows on ``threads`` torch threads (their
    products on ``device``) and write them atomically; returns the manifest. The store is read in row blocks (its masks unpacked a
    block at a time); ``mem_mb`` (the job's memory) is checked against what they need, before any work.
    ``threads`` and ``device`` default to the schema's ``fit.threads`` and ``fit.device``."""
    threads = _FIT["threads"] if threads is None else threads
    device = resolve_device(_FIT["device"] if device is None else device, "fit.device")
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
    progress = Progress(f"moments {alpha_dir(view.manifest['alpha'])}", m, "rows")
    parts = dict(
        zip(
            MOMENT_PARTS,
            count_moments(view.masks, view.margins[:, 0, :], [fit_rows, val_rows], device=device, progress=progress),
        )
    )
    every = {"fit": parts["fit"], "all": parts["fit"].combine(parts["val"])}
    lips = {key: top_eigenvalue(mom) for key, mom in every.items()}
    mus = {key: bottom_eigenvalue(mom, lips[key]) for key, mom in every.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    arrays = {}
    dtypes = {spec.name: spec.dtype for spec in MOMENT_ARRAYS}
    with ExitStack() as renames:
        for part, mom in parts.items():
            values = (mom.grams[0], mom.cross, mom.mean_y, mom.syy, mom.sum_x)  # in MOMENT_ARRAYS' order
            for name, value in zip(dtypes, values, strict=True):
                tmp = renames.enter_context(atomic_path(out_dir / f"{name}_{part}.npy", ".npy"))
                np.save(tmp, np.ascontiguousarray(value, dtype=dtypes[name]))
                arrays[f"{name}_{part}"] = tmp
    made_by = provenance.provenance(device=device)
    provenance.note_changes(made_by, [(f"the store {store}", view.manifest)], subject="moments")
    manifest = {
        "format": MOMENTS_FORMAT,
        "provenance": made_by,
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
                "dtype": dtypes[name.rsplit("_", 1)[0]].name,
                "sha256": digest,
            }
            for name, digest in zip(
                arrays, sha256_files((out_dir / f"{name}.npy" for name in arrays), workers=torch.get_num_threads())
            )
        },
    }
    atomic_save_json(out_dir / "manifest.json", manifest)
    log.info("moments of %s: %d fit and %d validation rows, n=%d, T=%d", store, len(fit_rows), len(val_rows), n, t)
    progress.finish()
    return manifest
