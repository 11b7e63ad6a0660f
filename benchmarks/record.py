"""``--record`` for the benchmark scripts: one row per run in a markdown table of RESULTS.md.

RESULTS.md holds one section per benchmark (``## <name>``): a few lines of prose
saying what the columns are, then ONE markdown table with a fixed header. A row
starts with where and on what it ran (``MACHINE_HEADER``: date, git commit, CPU,
cores, ISA, torch, GPU) and goes on with the benchmark's own figures. A new row goes
right after the last row of its section's table, whatever follows the section.

The scripts import this module as ``import record``: ``python benchmarks/x.py`` puts
benchmarks/ first on sys.path.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"

MACHINE_HEADER = ("date (UTC)", "commit", "machine", "cores", "ISA", "torch", "GPU")

INTRO = """# Benchmark results

Rows written by the scripts in this folder when run with `--record`
(`python benchmarks/train_throughput.py --record`, `python benchmarks/lasso_solvers.py --record`),
one row per run, appended to the table of the script's section; edit the prose, never a table's header
(a script refuses to record under a header that differs from its own).

Every row starts with where and on what it ran:

- **date (UTC)**: when the run started;
- **commit**: `git rev-parse --short HEAD`, with `+dirty` when the working tree had uncommitted
  changes (this file excepted), so the code measured may differ from the commit;
- **machine**: the CPU model (`/proc/cpuinfo`, else `platform.processor()`); **cores**: `os.cpu_count()`
  (the threads used are a column of their own);
- **ISA**: which of AMX, AVX-512, VNNI and AVX2 the CPU flags show (AMX: bf16 and int8 matrix units; VNNI: int8
  dot products; rows before the dispatch point did not name VNNI). `dmflow.core.kernels` times a bf16 or int8
  product against float32 only where these units exist, and uses it only where it wins;
- **torch**: the torch version; **GPU**: `torch.cuda.get_device_name(0)`, or `none`.

The benchmark's own figures follow; each section says what they are. Times are wall-clock on whatever
else the machine was doing: compare rows of one machine, and ratios measured side by side in one run
rather than rates of different runs. `-` marks a figure the run did not measure.
"""


class RecordError(ValueError):
    """RESULTS.md cannot take the row: its section's table has another header."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--record`` and ``--results-file``, as every benchmark takes them."""
    parser.add_argument("--record", action="store_true", help="append the figures as rows to --results-file")
    parser.add_argument(
        "--results-file", type=Path, default=None, help=f"markdown file --record appends to (default {RESULTS})"
    )


def results_file(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The file ``--record`` appends to (``RESULTS`` unless ``--results-file``); a usage error without ``--record``."""
    if args.results_file is not None and not args.record:
        parser.error("--results-file needs --record")
    return args.results_file or RESULTS


def _run(*cmd: str) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    """Short hash of HEAD, ``+dirty`` when the working tree has uncommitted changes (RESULTS.md aside)."""
    head = _run("git", "rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    top = _run("git", "rev-parse", "--show-toplevel")
    exclude = f":(exclude){RESULTS.relative_to(top).as_posix()}" if top and RESULTS.is_relative_to(top) else None
    status = _run("git", "-C", top or str(HERE), "status", "--porcelain", "--", ".", *([exclude] if exclude else []))
    return head + ("+dirty" if status else "")


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def isa() -> str:
    """Which of AMX, AVX-512, VNNI (int8 dot products) and AVX2 the CPU flags show, e.g. ``AMX+AVX-512+VNNI+AVX2``;
    ``none`` if none."""
    flags = set(_cpuinfo().get("flags", "").split())
    if flags:
        found = [
            name
            for name, have in (
                ("AMX", bool(flags & {"amx_tile", "amx_bf16"})),
                ("AVX-512", "avx512f" in flags),
                ("VNNI", bool(flags & {"avx512_vnni", "avx_vnni"})),
                ("AVX2", "avx2" in flags),
            )
            if have
        ]
    else:  # no /proc/cpuinfo: torch's dispatch level, the best it found
        import torch

        level = torch.backends.cpu.get_cpu_capability()
        found = {"AVX512": ["AVX-512", "AVX2"], "AVX2": ["AVX2"]}.get(level, [])
    return "+".join(found) or "none"


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def machine_cells() -> list[str]:
    """The row's first cells (``MACHINE_HEADER``), taken now: call it when the run starts."""
    import torch

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    return [date, git_commit(), cpu_name(), str(os.cpu_count()), isa(), torch.__version__, gpu_name()]


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ").strip() or "-"


def table_line(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _split(line: str) -> list[str]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\0", "\\|") for c in inner.replace("\\|", "\0").split("|")]


def _is_section_end(line: str) -> bool:
    return line.startswith("# ") or line.startswith("## ")


def _find_table(lines: list[str], section: str) -> tuple[int, int, int] | None:
    """(heading, first table line, one past the last) of ``section``; the table part (-1, end of section) if none."""
    heading = f"## {section}"
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    except StopIteration:
        return None
    end = next((i for i in range(start + 1, len(lines)) if _is_section_end(lines[i])), len(lines))
    first = next((i for i in range(start + 1, end) if lines[i].lstrip().startswith("|")), None)
    if first is None:
        return start, -1, end
    last = first
    while last < end and lines[last].lstrip().startswith("|"):
        last += 1
    return start, first, last


def _full_header(header: tuple[str, ...] | list[str]) -> list[str]:
    return [*MACHINE_HEADER, *header]


def check_section(path: Path, section: str, header: tuple[str, ...] | list[str]) -> None:
    """Raise RecordError now, before a long run, if ``path``'s section has a table with another header."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    found = _find_table(lines, section)
    if found is None or found[1] < 0:
        return
    have, want = _split(lines[found[1]]), [_cell(c) for c in _full_header(header)]
    if have != want:
        raise RecordError(
            f"{path}, section '## {section}': its table's header\n  {lines[found[1]].strip()}\ndiffers from this "
            f"script's\n  {table_line(want)}\nrecord into another file (--results-file) or rename the old section"
        )


def append_row(
    path: Path,
    section: str,
    header: tuple[str, ...] | list[str],
    cells: list[str],
    *,
    notes: str = "",
) -> str:
    """Append ``cells`` (the machine's, then the benchmark's) to ``section``'s table of ``path``; the row written.

    The file gets ``INTRO`` when created (or empty), the section its heading, ``notes``
    (what the columns are) and the table's header when missing.
    """
    path = Path(path)
    full = _full_header(header)
    if len(cells) != len(full):
        raise ValueError(f"{len(cells)} cells for {len(full)} columns: {full}")
    check_section(path, section, header)
    text = path.read_text() if path.is_file() else ""
    lines = (text if text.strip() else INTRO).rstrip("\n").splitlines()
    row = table_line(cells)
    table = [table_line(full), "|" + "|".join("---" for _ in full) + "|"]
    found = _find_table(lines, section)
    if found is None:
        block = ["", f"## {section}", ""] + ([*notes.strip("\n").splitlines(), ""] if notes.strip() else [])
        lines += [*block, *table, row]
    elif found[1] < 0:  # the heading without a table: the table ends the section's prose
        at = found[2]
        while at > found[0] + 1 and not lines[at - 1].strip():
            at -= 1
        lines[at:at] = ["", *table, row] + ([""] if at < len(lines) and lines[at].strip() else [])
    else:
        lines.insert(found[2], row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return row


def fmt(value: float | None, spec: str = ".2f") -> str:
    """A figure for a cell: ``format(value, spec)``, ``-`` for None or NaN."""
    if value is None or value != value:
        return "-"
    return format(value, spec)
