"""The commands a user runs by hand: check a config, read its docs, bring results in and out.

Each function imports what it needs when it runs (torch and Lightning take seconds to import).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from dmflow.cli.command import Commands, arg, schema_default
from dmflow.config import config_markdown, load_config
from dmflow.core.errors import StoreError
from dmflow.core.schema import load_schema
from dmflow.data.cifar10 import SYNTHETIC_CIFAR10

COMMANDS = Commands()


@COMMANDS.command(
    "check-config",
    "validate a config file and print it as YAML with every default filled in",
    arg("config", type=Path, help="the config file (YAML or JSON), as given to snakemake --configfile"),
)
def check_config(args: argparse.Namespace) -> None:
    """Print the validated config as YAML, the format users write, keys in the schema's order;
    ``load_config`` reads it back unchanged."""
    config = _in_schema_order(load_config(args.config), load_schema())
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _in_schema_order(value, schema: dict):
    """``value`` with every mapping's keys in the order the schema lists them."""
    properties = schema.get("properties")
    if not isinstance(value, dict) or properties is None:
        return value
    order = [k for k in properties if k in value] + [k for k in value if k not in properties]
    return {k: _in_schema_order(value[k], properties.get(k, {})) for k in order}


@COMMANDS.command(
    "status",
    "per stage of a run, running or finished: jobs done and left, rate and ETA",
    arg("results", type=Path, nargs="?", default=None, help="the results folder (default: the config's)"),
    arg("--config", type=Path, default=Path("config.yaml"), help="the run's config (default: config.yaml)"),
)
def status(args: argparse.Namespace) -> None:
    """Print ``dmflow.status.status_text`` of the run."""
    from dmflow.status import status_text

    sys.stdout.write(status_text(load_config(args.config), args.results))


@COMMANDS.command("config-docs", "print docs/configuration.md, generated from the config schema")
def config_docs(args: argparse.Namespace) -> None:
    """Print every config key, its default and its meaning."""
    sys.stdout.write(config_markdown())


@COMMANDS.command(
    "score-attribution",
    "score any attribution [n, T] on a run's eval store, as the datamodels are",
    arg("--run", type=Path, required=True, help="the run's results folder"),
    arg("--alpha", type=float, required=True, help="the subset fraction whose eval store scores it"),
    arg("--scores", type=Path, required=True, help=".npy, int or float [n, T]: example i's score for target t"),
    arg("--name", required=True, help="the method's name: evaluation/{alpha}/methods/{name}.csv and .json"),
    arg(
        "--transpose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the scores are [T, n] (--no-transpose: [n, T]; neither: [n, T] when it fits, else [T, n])",
    ),
)
def score_attribution(args: argparse.Namespace) -> None:
    """Score an attribution computed elsewhere beside the datamodels."""
    from dmflow.stages.evaluate import score_run_attribution

    score_run_attribution(args.run, args.scores, alpha=args.alpha, name=args.name, transpose=args.transpose)


STORE_FILES = ("masks", "margins", "status", "seeds")


@COMMANDS.command(
    "import-store",
    "write a store from masks and margins trained elsewhere (.npy files)",
    arg("--source", type=Path, default=None, help="folder of masks.npy, margins.npy [, status.npy, seeds.npy]"),
    arg("--masks", type=Path, default=None, help="bool or 0/1 [m, n]"),
    arg("--margins", type=Path, default=None, help="float [m, T] or [m, R, T]"),
    arg("--status", type=Path, default=None, help="0 ok / 1 diverged [m, R] (default: non-finite = diverged)"),
    arg("--seeds", type=Path, default=None, help="int [m, R] (default: -1, unknown)"),
    arg("--alpha", type=float, required=True, help="every mask row holds round(alpha * n) ones"),
    arg("--split", choices=("fit", "eval"), required=True, help="which store: %(choices)s"),
    arg(
        "--max-diverged-fraction",
        type=float,
        default=schema_default("train", "max_diverged_fraction"),
        help="fail, writing no store, above this share of diverged models (train.max_diverged_fraction; "
        "default: %(default)s)",
    ),
    arg("--out-dir", type=Path, required=True, help="the store folder, e.g. results/x/store/0.5/fit"),
)
def import_store(args: argparse.Namespace) -> None:
    """Check and write a store; a file not named is looked for in ``--source``."""
    from dmflow.stages.collect import import_store

    files = {}
    for name in STORE_FILES:
        path = getattr(args, name)
        if path is None and args.source is not None and (args.source / f"{name}.npy").is_file():
            path = args.source / f"{name}.npy"
        files[name] = path
    for name in ("masks", "margins"):
        if files[name] is None:
            raise StoreError(f"no {name}: give --{name} FILE, or --source DIR holding {name}.npy")
    import_store(
        files["masks"],
        files["margins"],
        args.out_dir,
        alpha=args.alpha,
        split=args.split,
        status=files["status"],
        seeds=files["seeds"],
        max_diverged_fraction=args.max_diverged_fraction,
    )


@COMMANDS.command(
    "export",
    "write a run's datamodels in another tool's format",
    arg("--format", choices=("madrylab",), required=True, help="madrylab: torch .pt {weight, bias, lam}"),
    arg("--run", type=Path, default=None, help="the run's results folder (with --alpha)"),
    arg("--alpha", type=float, default=None, help="the subset fraction whose datamodels to export (with --run)"),
    arg("--datamodels", type=Path, default=None, help="a datamodels .npz instead of --run and --alpha"),
    arg("--out", type=Path, required=True, help="a new file outside the run's results folder"),
    arg("--force", action="store_true", help="replace --out if it is an existing regular file"),
)
def export(args: argparse.Namespace) -> None:
    """Export the datamodels of ``--run`` and ``--alpha``, or of ``--datamodels``."""
    from dmflow.core.layout import Layout, alpha_dir
    from dmflow.stages.fit import export_datamodels

    if args.datamodels is None and (args.run is None or args.alpha is None):
        raise StoreError("give --run and --alpha, or --datamodels FILE")
    datamodels = args.datamodels or Layout(args.run).datamodels(alpha_dir(args.alpha))
    export_datamodels(Path(datamodels), args.out, format=args.format, force=args.force, results=args.run)


@COMMANDS.command(
    "synthetic-cifar10",
    "write a synthetic folder in CIFAR-10's python format (demos, tests)",
    arg("--out", type=Path, required=True, help="folder to create (e.g. data/cifar-10-batches-py)"),
    arg("--train", type=int, default=SYNTHETIC_CIFAR10["train"], help="training images (default: %(default)s)"),
    arg("--test", type=int, default=SYNTHETIC_CIFAR10["test"], help="test images (default: %(default)s)"),
    arg("--classes", type=int, default=SYNTHETIC_CIFAR10["classes"], help="classes (default: %(default)s)"),
    arg("--seed", type=int, default=schema_default("seed"), help="the random draw's seed (default: %(default)s)"),
)
def synthetic_cifar10(args: argparse.Namespace) -> None:
    """A learnable stand-in for CIFAR-10 where no copy exists."""
    from dmflow.stages.data import synthetic_cifar10

    synthetic_cifar10(args.out, train=args.train, test=args.test, classes=args.classes, seed=args.seed)
