"""Atomic, pickle-free file writing and reading: the only way stage files are written.

A killed job must never leave a half-written file that a later stage could read,
so every writer goes through a temporary file in the same folder and a rename.
Only ``dmflow.stages`` calls the writers (a test checks it).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the fallback only)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    The file gets the mode a plain ``open()`` would give it (0666 minus the umask), not
    mkstemp's private 0600: results on a shared folder stay readable by collaborators.
    Temporaries of ``final`` that a killed writer left behind (``.{name}.*.tmp{suffix}``)
    are removed first: at scale each can be the size of the store.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_save_npz(final: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` atomically and byte-reproducibly.

    ``np.savez`` stamps each member with the current time, so equal arrays would give
    different files (and checksums); a fixed timestamp makes equal content equal bytes.
    """
    with atomic_path(final, ".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def atomic_save_npy(final: Path, array: np.ndarray) -> None:
    """Write one ``.npy`` atomically."""
    with atomic_path(final, ".npy") as tmp:
        np.save(tmp, array)


def atomic_save_json(final: Path, obj: Any) -> None:
    """Write pretty JSON atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_table(table: pd.DataFrame, final: Path) -> None:
    """Write a table atomically: parquet for a ``.parquet`` name, csv for any other."""
    final = Path(final)
    with atomic_path(final, final.suffix) as tmp:
        if final.suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


def save_figure(fig: Figure, final: Path) -> None:
    """Write a matplotlib figure atomically as PNG."""
    with atomic_path(Path(final), ".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory, refusing pickled objects."""
    with np.load(Path(path), allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], *, workers: int = 1) -> list[str]:
    """``sha256_file`` of each path, ``workers`` files side by side (hashlib releases the interpreter lock
    while it hashes a block, so threads hash in parallel)."""
    paths = list(paths)
    if workers <= 1 or len(paths) <= 1:
        return [sha256_file(p) for p in paths]
    with ThreadPoolExecutor(min(workers, len(paths))) as pool:
        return list(pool.map(sha256_file, paths))
