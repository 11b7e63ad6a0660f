"""Atomic, pickle-free file writing and reading: the only way stage files are written.

A killed job must never leave a half-written file that a later stage could read,
so every writer goes through a temporary file in the same folder and a rename.
Only ``dmflow.stages`` calls the writers (a test checks it).

Every JSON file dmflow writes carries the sha256 of its own content (``SEAL``), which
``load_json`` verifies: a manifest whose counts divide the moments cannot be edited or
corrupted without the reader noticing. ``.npz`` members carry zip's CRC-32, ``.npy``
arrays their sha256 in a manifest. A file that fails is named in one line
(``FileError``) with what rebuilds it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import resource
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dmflow.core.errors import FileError
from dmflow.core.tables import USAGE

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure


SEAL = "json_sha256"
"""The key of a JSON file's own checksum: the sha256 of the rest of it, as compact key-sorted JSON."""


def _digest(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


NAME_MAX = 255
"""The longest file name (bytes) Linux and macOS filesystems take."""


def _temporary_name(final: Path, suffix: str) -> tuple[str, str]:
    """(prefix, suffix) of ``final``'s temporaries, ``.{name}.`` and ``.tmp{suffix}`` around mkstemp's 8
    characters; for a name too long to take them, its first 100 bytes and a hash of the whole name (still
    a prefix no other file's temporaries have), and no suffix past 32 bytes (no format needs one)."""
    prefix, tail = f".{final.name}.", f".tmp{suffix}"
    if len(os.fsencode(prefix + tail)) + 8 <= NAME_MAX:
        return prefix, tail
    digest = hashlib.sha256(os.fsencode(final.name)).hexdigest()[:16]
    return f".{os.fsdecode(os.fsencode(final.name)[:100])}.{digest}.", tail if len(os.fsencode(tail)) <= 32 else ".tmp"


def no_space(path: Path, needed: int | None = None) -> OSError:
    """The one-line ENOSPC error of a write to ``path``: the space free on its device, and the space needed."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MB free"
    except OSError:
        free = "free space unknown"
    need = f"it needs ~{needed / 2**20:.1f} MB, " if needed else ""
    return OSError(
        errno.ENOSPC, f"no space left on its device ({need}{free}); free some space or write elsewhere", str(path)
    )


def check_free_space(path: Path, needed: int) -> None:
    """Refuse a write of ``needed`` bytes to ``path`` before it starts, if its device has less free (memory-mapped
    writes to a full disk would end in SIGBUS, not an error).

    Raises
    ------
    OSError
        ENOSPC, one line (``no_space``): ``path``, the space it needs and the space free.
    """
    if shutil.disk_usage(Path(path).parent).free < needed:
        raise no_space(path, needed)


def _not_regular(path: Path) -> str | None:
    """What stands at ``path`` if it is something dmflow never replaces (a link, a folder, a device...), else None."""
    if path.is_symlink():
        return "a symbolic link"
    if path.exists() and not path.is_file():
        return "a folder" if path.is_dir() else "not a regular file"
    return None


@contextmanager
def atomic_path(final: Path, suffix: str = "", *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    The file gets the mode a plain ``open()`` would give it (0666 minus the umask), not
    mkstemp's private 0600: results on a shared folder stay readable by collaborators.
    Temporaries of ``final`` that a killed writer left behind (``.{name}.*.tmp{suffix}``)
    are removed first: at scale each can be the size of the store. Only a regular file is
    ever replaced: a folder, a device, a pipe or a symbolic link at ``final`` is refused
    (``FileError``), never replaced or followed. A full disk is one ``OSError`` line naming
    ``final``, the space free and, given ``needed`` (bytes), the space needed, checked first.
    """
    final = Path(final)
    if kind := _not_regular(final):
        raise FileError(f"{final}: is {kind}; dmflow replaces only regular files it wrote (move it away first)")
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix, tail = _temporary_name(final, suffix)
    for stale in final.parent.glob(f"{glob.escape(prefix)}*{glob.escape(tail)}"):
        stale.unlink(missing_ok=True)
    if needed:
        check_free_space(final, needed)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=tail, dir=final.parent)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create a file in its folder ({exc.strerror})", str(final)) from None
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(final, needed) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_new_output(path: Path, *, force: bool = False, inside: Path | None = None) -> None:
    """Refuse, before any work, an output file a user named that would clobber something.

    The write policy for outputs named on the command line (``dmflow export --out``): an
    existing path is replaced only with ``force`` and only if it is a regular file (never a
    folder, device, pipe or symbolic link, whatever ``force`` says), and nothing is written
    inside ``inside`` (the run's own results folder, which only the workflow writes).

    Raises
    ------
    FileError
        One line naming the path and what is allowed.
    """
    path = Path(path)
    if inside is not None and Path(os.path.abspath(path)).is_relative_to(os.path.abspath(inside)):
        raise FileError(
            f"{path}: inside the run's results folder {inside}, which only the workflow writes; name a file elsewhere"
        )
    if kind := _not_regular(path):
        raise FileError(f"{path}: is {kind}; name a new file (dmflow replaces only regular files)")
    if path.exists() and not force:
        raise FileError(f"{path}: exists; give --force to replace it, or name a new file")


def atomic_save_npz(final: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` atomically and byte-reproducibly.

    ``np.savez`` stamps each member with the current time, so equal arrays would give
    different files (and checksums); a fixed timestamp makes equal content equal bytes.
    """
    needed = sum(np.asanyarray(value).nbytes for value in arrays.values())
    with atomic_path(final, ".npz", needed=needed) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def atomic_save_npy(final: Path, array: np.ndarray) -> None:
    """Write one ``.npy`` atomically."""
    with atomic_path(final, ".npy", needed=np.asanyarray(array).nbytes) as tmp:
        np.save(tmp, array)


def atomic_save_json(final: Path, obj: Mapping[str, Any]) -> None:
    """Write a JSON object atomically, pretty-printed, sealed with the sha256 of its content (``SEAL``).

    The seal is taken of the object as JSON gives it back (keys become strings: {5: a, 10: b} sorts as
    "10", "5" once read), so that ``load_json`` finds the same digest."""
    body = json.loads(json.dumps({key: value for key, value in obj.items() if key != SEAL}))
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps({**body, SEAL: _digest(body)}, indent=2, sort_keys=True) + "\n")


REBUILD = "rerun the workflow, which rebuilds it"


def load_json(path: Path, *, rebuild: str = REBUILD, sealed: bool = True) -> dict[str, Any]:
    """A JSON object dmflow wrote, its checksum verified (and removed from the result).

    Parameters
    ----------
    path : Path
        The file.
    rebuild : str
        What rebuilds it, for the error (e.g. "rerun the workflow: the moments rule writes it").
    sealed : bool
        Require the checksum. False only for files no result depends on (a file without
        one, from an older dmflow, is then read as it is; one with a wrong one never).

    Raises
    ------
    FileError
        Missing, not a regular file, not a JSON object, or its content differs from its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{path}: missing or not a regular file; {rebuild}")
    try:
        obj = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise FileError(f"{path}: not valid JSON ({reason}: truncated or corrupted); remove it and {rebuild}") from None
    if not isinstance(obj, dict):
        raise FileError(f"{path}: not a JSON object (corrupted or replaced); remove it and {rebuild}")
    seal = obj.pop(SEAL, None)
    if seal is None and sealed:
        raise FileError(f"{path}: has no checksum (edited, or written by an older dmflow); remove it and {rebuild}")
    if seal is not None and seal != _digest(obj):
        raise FileError(f"{path}: its content differs from its checksum (edited or corrupted); remove it and {rebuild}")
    return obj


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


def load_npz(path: Path, *, rebuild: str = REBUILD) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into memory, refusing pickled objects.

    Raises
    ------
    FileError
        The file is missing, truncated, not an npz, or a member fails zip's CRC-32 check
        (one line naming it; ``rebuild`` says what writes it again).
    """
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{path}: missing or not a regular file; {rebuild}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, Mapping):  # an NpzFile is a mapping of its arrays
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as f:
            return {key: f[key] for key in f.files}
    except Exception as exc:  # a flipped bit surfaces as zip, zlib, numpy-header or even "encrypted" errors
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        if "pickled" in reason or "allow_pickle" in reason:
            reason = "not an .npz archive of arrays"
        raise FileError(f"{path}: cannot be read ({reason}); remove it and {rebuild}") from None


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


def save_usage(path: Path, seconds: float) -> None:
    """One job's resources as a one-row TSV in the columns of Snakemake's ``benchmark:`` files that
    summary.md reads: ``s`` (wall), ``max_rss`` (MB, this process and its children), ``cpu_time`` (s).
    dmflow writes it itself, not as a rule output, so results made before it existed need no rerun."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_mb = max(me.ru_maxrss, children.ru_maxrss) / 1024  # KiB on Linux
    cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    with atomic_path(Path(path)) as tmp:
        tmp.write_text("\t".join(USAGE.names) + f"\n{seconds:.4f}\t{rss_mb:.2f}\t{cpu:.2f}\n")
