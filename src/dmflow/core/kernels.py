"""The one dispatch point for CPU-specific kernels: which arithmetic each kind of product runs here.

Some products have a faster form on some CPUs only: the 0/1 Gram X^T X and the cross
moments as int8 products (AMX or VNNI units), training in bf16 (AMX). The same forms are
tens of times *slower* where the CPU lacks those units (an AVX2-only CPU converts them in
software), so none is chosen by CPU family alone. For each kind, ``choose``:

1. takes a forced choice, if any: ``force`` (the CLI's ``--kernels``, from the config's
   ``kernels`` section) or the environment variable ``DMFLOW_KERNELS``, e.g.
   ``float32`` (every kind) or ``gram=int8,cross=float32``;
2. else keeps ``float32`` unless the CPU reports the units a candidate needs
   (``CAPABILITIES``);
3. else times each candidate against float32 on a small product of the caller's shape
   class (a warm-up, then the best of ``REPEATS``; a candidate already ``LOSES`` times
   slower is not timed further: well under a second in all) and takes one only where it
   is at least ``WIN`` times faster. The result is cached for the process and logged.

float32 is the safe default: it is exact wherever the callers need exactness (0/1 products
summed below 2^24) and fast on every CPU. ``chosen`` lists what this process ran, for
manifests and benchmarks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

ENV = "DMFLOW_KERNELS"
KINDS = {  # kind -> its candidates, float32 first (the default)
    "gram": ("float32", "int8"),
    "cross": ("float32", "int8"),
    "train": ("float32", "bf16"),
}
CAPABILITIES = {  # candidate -> any of these CPU capabilities (torch.cpu.get_capabilities) makes it worth timing
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni"),
    "bf16": ("amx_bf16", "avx512_bf16"),
}
WIN = 1.15
"""A candidate replaces float32 only where it is at least this much faster (timing noise is ~5-10%)."""
LOSES = 3.0
"""A candidate whose warm-up already takes this many times float32's best is not timed again."""
REPEATS = 3

_forced: dict[str, str] = {}
_cache: dict[tuple[str, tuple[int, ...]], str] = {}
_chosen: dict[str, str] = {}


class KernelError(ValueError):
    """A kernel setting that names no kind or candidate; the message is one line."""


def parse(setting: str | Mapping[str, str] | None) -> dict[str, str]:
    """A kernel setting as {kind: candidate or "auto"}.

    Parameters
    ----------
    setting : str, mapping or None
        ``"auto"`` or one candidate for every kind that has it (``"float32"``), or
        ``"kind=candidate,..."``, or a mapping of the same; None or "" is all ``auto``.

    Raises
    ------
    KernelError
        A kind or candidate that does not exist, named with what is allowed.
    """
    if not setting:
        return {}
    if isinstance(setting, str):
        parts = [p.strip() for p in setting.split(",") if p.strip()]
        if len(parts) == 1 and "=" not in parts[0]:
            value = parts[0]
            if value != "auto" and not any(value in c for c in KINDS.values()):
                allowed = sorted({c for cs in KINDS.values() for c in cs} | {"auto"})
                raise KernelError(f"kernels={value!r}: not a kernel; allowed: {', '.join(allowed)} or kind=kernel")
            return {kind: value for kind, cands in KINDS.items() if value == "auto" or value in cands}
        pairs = {}
        for part in parts:
            kind, sep, value = part.partition("=")
            if not sep:
                raise KernelError(f"kernels={setting!r}: {part!r} is not kind=kernel (kinds: {', '.join(KINDS)})")
            pairs[kind.strip()] = value.strip()
        setting = pairs
    out = {}
    for kind, value in setting.items():
        if kind not in KINDS:
            raise KernelError(f"kernels: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        if value != "auto" and value not in KINDS[kind]:
            raise KernelError(f"kernels.{kind}={value!r}: allowed: auto, {', '.join(KINDS[kind])}")
        out[kind] = value
    return out


def force(setting: str | Mapping[str, str] | None) -> None:
    """Force kernels for this process (over ``DMFLOW_KERNELS``); ``auto`` or None leaves a kind to ``choose``.
    Earlier measurements and choices are forgotten."""
    _forced.clear()
    _forced.update({k: v for k, v in parse(setting).items() if v != "auto"})
    _cache.clear()
    _chosen.clear()


def forced(kind: str) -> str | None:
    """The candidate forced for ``kind`` (by ``force``, else ``DMFLOW_KERNELS``), or None."""
    if kind in _forced:
        return _forced[kind]
    value = parse(os.environ.get(ENV, "")).get(kind, "auto")
    return None if value == "auto" else value


def capable(candidate: str) -> bool:
    """Whether this CPU reports units that make ``candidate`` worth timing (float32, and any candidate
    that ``CAPABILITIES`` does not list, i.e. that needs no special units: always)."""
    if candidate == "float32" or candidate not in CAPABILITIES:
        return True
    import torch  # heavy: only the jobs that choose a kernel load it

    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return any(caps.get(name, False) for name in CAPABILITIES.get(candidate, ()))


def _best(run: Callable[[], object], *, give_up: float = float("inf")) -> float:
    """Best seconds of ``run()`` over ``REPEATS`` after a warm-up; the warm-up's time if it exceeds ``give_up``."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    if first > give_up:
        return first
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def choose(
    kind: str,
    candidates: Mapping[str, Callable[[], object]],
    *,
    shape: tuple[int, ...] = (),
    default: str = "float32",
) -> str:
    """The candidate of ``kind`` to run here: forced, else the fastest measured (``default`` unless another wins).

    Parameters
    ----------
    kind : str
        A key of ``KINDS`` (forcible by ``force`` and ``DMFLOW_KERNELS``), or another name
        whose caller forces it through its own setting.
    candidates : mapping of str to callable
        Each candidate's probe: runs its product once on a small instance of the caller's
        shape class (``default`` must be among them). A probe that raises RuntimeError marks
        its candidate as unavailable in this torch.
    shape : tuple of int
        The shape class, part of the cache key (a choice is measured once per process and class).
    default : str
        The safe candidate, kept unless another is at least ``WIN`` times faster.

    Returns
    -------
    str
        The candidate's name.
    """
    want = forced(kind) if kind in KINDS else None
    if want is not None:
        _chosen[kind] = want
        return want
    key = (kind, tuple(shape))
    if key in _cache:
        _chosen[kind] = _cache[key]
        return _cache[key]
    others = [name for name in candidates if name != default and capable(name)]
    times, best = {}, default
    if others:  # else nothing to time: the default is the only candidate this CPU has units for
        times[default] = base = _best(candidates[default])
        for name in others:
            try:
                times[name] = _best(candidates[name], give_up=LOSES * base)
            except RuntimeError:  # pragma: no cover - a torch without this product
                continue
            if times[name] * WIN <= times[best]:
                best = name
    _cache[key] = _chosen[kind] = best
    measured = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in times.items()) or "no other units"
    log.info("kernels: %s %s -> %s (%s)", kind, "x".join(map(str, shape)) or "", best, measured)
    return best


def chosen() -> dict[str, str]:
    """What ``choose`` returned in this process, per kind (for manifests and benchmarks)."""
    return dict(_chosen)
