"""Command line: ``dmflow COMMAND ...``, also ``python -m dmflow``.

The global options and error handling live here; the commands in ``tools.py`` (what a user
runs by hand) and ``rules.py`` (what the Snakemake rules run, one per rule), each function
beside its arguments (``command.py``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import time
import warnings
from pathlib import Path

from dmflow import __version__
from dmflow.cli import rules, tools
from dmflow.config import ConfigError
from dmflow.core import kernels, progress
from dmflow.core.device import DeviceError
from dmflow.core.errors import DataError, DataWarning, FileError, StoreError
from dmflow.core.io import save_usage

DESCRIPTION = (
    "Datamodels (Ilyas et al. 2022) as a Snakemake workflow, which 'snakemake --cores 2' runs. "
    "This command runs one step of it without Snakemake. The commands a user runs: "
    f"{', '.join(c.name for c in tools.COMMANDS)}. The others are the workflow's rules, one each, "
    "and take the config's sections as JSON."
)
EPILOG = "'dmflow COMMAND --help' describes a command's options."


def build_parser() -> argparse.ArgumentParser:
    """The ``dmflow`` parser: the global options, then the user's commands, then the rules' commands."""
    parser = argparse.ArgumentParser(prog="dmflow", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"dmflow {__version__}", help="print the version")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages too (on stderr)")
    parser.add_argument(
        "--kernels",
        default=None,
        metavar="SPEC",
        help="force the CPU-specific kernels: 'float32', or 'gram=int8,cross=float32,train=auto' (the config's "
        "kernels section; default: the environment's DMFLOW_KERNELS, else measured here)",
    )
    parser.add_argument(
        "--usage",
        type=Path,
        default=None,
        metavar="TSV",
        help="after the command succeeds, write its wall seconds, max RSS (MB) and CPU seconds there, in the "
        "columns of Snakemake's benchmark files (s, max_rss, cpu_time); the heavy rules pass it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    tools.COMMANDS.add_to(sub, group="A user's command.")
    rules.COMMANDS.add_to(sub, group="The command of a workflow rule (rules/*.smk).")
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # a finished job's one line also on stdout, which Snakemake shows on its console (dmflow.core.progress)
    done = logging.getLogger("dmflow.core.progress.done")
    for handler in [h for h in done.handlers if h.get_name() == "dmflow-console"]:
        done.removeHandler(handler)
    console = logging.StreamHandler(sys.stdout)
    console.set_name("dmflow-console")
    console.setFormatter(logging.Formatter("dmflow: %(message)s"))
    done.addHandler(console)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A DataWarning as one line on stderr (``dmflow: warning: ...``); others as Python shows them."""
    if issubclass(category, DataWarning):
        print(f"dmflow: warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Run one command; a config, data, device or store problem ends it with one line (exit status 1)."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    warnings.showwarning = _warning_line
    try:
        if args.kernels is not None:
            kernels.force(args.kernels)
        progress.interval()  # a bad DMFLOW_PROGRESS_SECONDS stops here, before any work
        start = time.perf_counter()
        args.func(args)
        if args.usage is not None:
            save_usage(args.usage, time.perf_counter() - start)
    except ConfigError as exc:
        raise SystemExit(f"dmflow: config error: {exc}") from None
    except (StoreError, DataError, DeviceError, kernels.KernelError, FileError, progress.ProgressError) as exc:
        raise SystemExit(f"dmflow {args.command}: {exc}") from None
    except OSError as exc:  # the system refused a read or write: a full disk, a read-only folder, a name too long
        raise SystemExit(f"dmflow {args.command}: {_os_error_line(exc)}") from None


OS_ERROR_HINTS = {
    errno.ENAMETOOLONG: "a file name may have at most 255 bytes, a path 4096",
    errno.EEXIST: "a file is where a folder is needed",
    errno.ENOTDIR: "a file is where a folder is needed",
    errno.EISDIR: "a folder is where a file is needed",
    errno.EROFS: "the folder is on a read-only file system; write elsewhere",
    errno.EACCES: "no permission for this path as this user",
}


def _os_error_line(exc: OSError) -> str:
    """An OSError as one line: the path, the system's reason and what to do."""
    where = ": ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    reason = exc.strerror or str(exc)
    hint = OS_ERROR_HINTS.get(exc.errno)
    return " ".join(f"{where + ': ' if where else ''}{reason}{f' ({hint})' if hint else ''}".splitlines())
