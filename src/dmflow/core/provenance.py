"""What produced a result: the ``provenance`` block every manifest carries.

Each writer of a manifest (store, moments, fit blocks and datamodels, evaluation summary) adds
``provenance()`` under the key ``provenance``: dmflow's version and git commit (when its source is
a git checkout), Python, torch, Lightning, numpy and Snakemake versions, CUDA and cuDNN (as torch
was built with them), the device and CPU model, and the kernel paths this process chose
(``dmflow.core.kernels.chosen``). ``note_changes`` logs one line when a job runs with other
versions than the results it builds on (never refusing: a rerun is allowed, and said).

The package never imports snakemake: its version comes from the installed metadata.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dmflow.core import kernels

log = logging.getLogger(__name__)

KEY = "provenance"
"""The manifests' key of the block."""

PACKAGES = {"torch": "torch", "lightning": "pytorch_lightning", "numpy": "numpy", "snakemake": "snakemake"}
"""Field -> the distribution whose installed version it records (None when not installed)."""

COMPARED = ("dmflow", "git_commit", "python", *PACKAGES, "cuda", "cudnn", "cpu")
"""The fields a rerun is checked against (the device and kernels are per job: the moments may run on a GPU
while the training ran on the CPU, so they are compared only where both blocks name the same kind)."""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@cache
def git_commit() -> str | None:
    """The commit of the checkout dmflow runs from (``git rev-parse HEAD``, with ``-dirty`` when its tracked
    files differ), or None when the source is not in a git checkout of dmflow or git is missing."""
    package = Path(__file__).resolve().parents[1]  # .../src/dmflow
    checkout = package.parent.parent
    if not (checkout / ".git").exists():  # an installed copy, or a folder inside some other repository
        return None
    try:
        head = subprocess.run(
            ["git", "-C", os.fspath(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", os.fspath(checkout), "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(*, device: str = "cpu") -> dict[str, Any]:
    """The provenance block of a result this process writes.

    Parameters
    ----------
    device : str
        Where the job computed (``cpu``, ``cuda``); a CUDA device is recorded with its name.

    Returns
    -------
    dict
        JSON-ready: ``dmflow`` (its installed version; None when it runs from a source folder only, where
        ``git_commit`` names it), ``git_commit`` (None outside a checkout), ``python``, ``torch``,
        ``lightning``, ``numpy``, ``snakemake`` (None when a package is not installed), ``cuda`` and
        ``cudnn`` (None for a CPU-only torch), ``device``, ``cpu`` and ``kernels`` ({kind: choice}).
    """
    import torch  # heavy, and only the jobs that write manifests need it

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    device_name = str(device)
    if device_name.startswith("cuda") and torch.cuda.is_available():
        device_name = f"{device_name} ({torch.cuda.get_device_name(torch.device(device_name))})"
    block = {
        "dmflow": _version("dmflow"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        **{field: _version(dist) for field, dist in PACKAGES.items()},
        "cuda": torch.version.cuda,
        "cudnn": None if cudnn is None else str(cudnn),
        "device": device_name,
        "cpu": cpu_model(),
        "kernels": dict(sorted(kernels.chosen().items())),
    }
    return json.loads(json.dumps(block))


def differences(earlier: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two provenance blocks, as ``"torch 2.3.0 -> 2.4.0"`` items (``COMPARED`` fields,
    and the kernels of the kinds both name)."""
    out = [f"{key} {earlier.get(key)} -> {now.get(key)}" for key in COMPARED if earlier.get(key) != now.get(key)]
    old, new = earlier.get("kernels") or {}, now.get("kernels") or {}
    out += [
        f"kernels.{kind} {old[kind]} -> {new[kind]}"
        for kind in sorted(old.keys() & new.keys())
        if old[kind] != new[kind]
    ]
    return out


def read(source: Path | Mapping[str, Any]) -> dict[str, Any] | None:
    """The provenance block of a JSON manifest (a path or its loaded content), or of a loaded ``.npz``'s
    ``provenance`` member (``as_array``); None where there is none (written by an older dmflow, or missing)."""
    if isinstance(source, Mapping):
        block = source.get(KEY)
    else:
        try:
            block = json.loads(Path(source).read_text()).get(KEY)
        except (OSError, ValueError, AttributeError):
            return None
    if isinstance(block, np.ndarray):
        try:
            block = json.loads(str(block))
        except ValueError:
            return None
    return block if isinstance(block, dict) else None


def note_changes(
    now: Mapping[str, Any], earlier: Iterable[tuple[str, Path | Mapping[str, Any]]], *, subject: str = "this job"
) -> str | None:
    """Log one line (a warning) when ``now`` differs from the provenance of the results a job builds on or
    replaces; returns the line (None: nothing differs, or nothing earlier has a provenance).

    Parameters
    ----------
    now : dict
        This job's ``provenance()``.
    earlier : iterable of (name, source)
        Each earlier result's name (for the line) and its manifest (``read``).
    subject : str
        What ``now`` describes, for the line.
    """
    parts = []
    for name, source in earlier:
        block = read(source)
        if block is not None and (diff := differences(block, now)):
            parts.append(f"{name}: {', '.join(diff)}")
    if not parts:
        return None
    line = f"provenance: {subject} ran with other versions than " + "; ".join(parts) + " (nothing is refused)"
    log.warning("%s", line)
    return line


def as_array(block: Mapping[str, Any]) -> np.ndarray:
    """A provenance block as a 0-d unicode array, the ``provenance`` member of an ``.npz`` (no pickles)."""
    return np.array(json.dumps(block, sort_keys=True))
