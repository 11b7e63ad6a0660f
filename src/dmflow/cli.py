"""Command line: ``dmflow <stage> ...`` runs one stage (``dmflow.stages``) without Snakemake.

The Snakemake rules call exactly these commands, so a stage behaves the same from a
rule, a shell or another workflow engine. Each command is a rule's name with dashes
and calls the stage function of that name. Settings that come from a config section
are passed as one JSON object (``--train '{"epochs": 20, ...}'``).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import warnings
from pathlib import Path

from dmflow import __version__
from dmflow.attribution import BASELINE_METHODS
from dmflow.config import ConfigError, config_markdown, load_config
from dmflow.core import kernels
from dmflow.core.device import DeviceError, resolve_device
from dmflow.core.io import FileError
from dmflow.core.seeds import SPLITS
from dmflow.data.sources import DataError, DataWarning
from dmflow.store.schema import StoreError


def _json(text: str) -> dict:
    return json.loads(text)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# Each cmd_* imports its stage module when called: a command loads only the libraries
# its stage needs (torch and Lightning take seconds to import).
def cmd_check_config(args: argparse.Namespace) -> None:
    print(json.dumps(load_config(args.config), indent=2, sort_keys=True))


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A DataWarning as one line on stderr (``dmflow: warning: ...``); others as Python shows them."""
    if issubclass(category, DataWarning):
        print(f"dmflow: warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def cmd_config_docs(args: argparse.Namespace) -> None:
    sys.stdout.write(config_markdown())


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from dmflow.stages.data import prepare_data

    prepare_data(args.dataset, args.seed, args.out)


def cmd_synthetic_cifar10(args: argparse.Namespace) -> None:
    from dmflow.stages.data import synthetic_cifar10

    synthetic_cifar10(args.out, train=args.train, test=args.test, classes=args.classes, seed=args.seed)


def cmd_make_masks(args: argparse.Namespace) -> None:
    from dmflow.stages.masks import make_masks

    make_masks(
        args.data,
        args.out,
        alpha=args.alpha,
        split=args.split,
        chunk=args.chunk,
        chunk_size=args.chunk_size,
        seed=args.seed,
    )


def cmd_train_chunk(args: argparse.Namespace) -> None:
    from dmflow.stages.train import train_chunk
    from dmflow.training.settings import TrainSettings

    train_chunk(
        args.data,
        args.masks,
        args.out,
        seed=args.seed,
        alpha=args.alpha,
        split=args.split,
        chunk=args.chunk,
        replicates=args.replicates,
        settings=TrainSettings.from_config(args.model, args.train),
        threads=args.threads,
    )


def cmd_collect(args: argparse.Namespace) -> None:
    from dmflow.stages.collect import collect

    collect(
        args.masks,
        args.trained,
        args.out_dir,
        data=args.data,
        alpha=args.alpha,
        split=args.split,
        seed=args.seed,
        replicates=args.replicates,
        chunk_size=args.chunk_size,
        max_diverged_fraction=args.max_diverged_fraction,
    )


def cmd_moments(args: argparse.Namespace) -> None:
    from dmflow.stages.moments import moments

    moments(
        args.store,
        args.out_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
        threads=args.threads,
        mem_mb=args.mem_mb,
        device=resolve_device(args.device, "fit.device"),
    )


def cmd_fit_block(args: argparse.Namespace) -> None:
    from dmflow.lasso.settings import FitSettings
    from dmflow.stages.fit import fit_block

    fit_block(
        args.moments,
        args.out,
        block=args.block,
        targets_per_job=args.targets_per_job,
        settings=FitSettings.from_config(args.fit),
        store_manifest=args.store_manifest,
        threads=args.threads,
        mem_mb=args.mem_mb,
    )


def cmd_merge_fit(args: argparse.Namespace) -> None:
    from dmflow.stages.fit import merge_fit

    merge_fit(args.blocks, args.data, args.out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dmflow.stages.evaluate import evaluate

    evaluate(args.datamodels, args.eval_store, table=args.table, summary=args.summary, figure=args.figure)


def cmd_score_attribution(args: argparse.Namespace) -> None:
    from dmflow.stages.evaluate import score_run_attribution

    score_run_attribution(args.run, args.scores, alpha=args.alpha, name=args.name, transpose=args.transpose)


def cmd_baseline_scores(args: argparse.Namespace) -> None:
    from dmflow.stages.baselines import baseline_scores
    from dmflow.training.settings import TrainSettings

    baseline_scores(
        args.data,
        method=args.method,
        settings=TrainSettings.from_config(args.model, args.train),
        baselines=args.baselines,
        seed=args.seed,
        scores=args.scores,
        info=args.info,
        curve=args.curve,
        threads=args.threads,
    )


def cmd_compare_methods(args: argparse.Namespace) -> None:
    from dmflow.stages.baselines import compare_methods

    compare_methods(args.run, alpha=args.alpha, methods=args.methods, table=args.table, figure=args.figure)


def cmd_import_store(args: argparse.Namespace) -> None:
    from dmflow.stages.collect import import_store

    files = {}
    for name in ("masks", "margins", "status", "seeds"):
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


def cmd_export(args: argparse.Namespace) -> None:
    from dmflow.core.layout import Layout, alpha_dir
    from dmflow.stages.fit import export_datamodels

    if args.datamodels is None and (args.run is None or args.alpha is None):
        raise StoreError("give --run and --alpha, or --datamodels FILE")
    datamodels = args.datamodels or Layout(args.run).datamodels(alpha_dir(args.alpha))
    export_datamodels(Path(datamodels), args.out, format=args.format, force=args.force, results=args.run)


def cmd_learning_curve(args: argparse.Namespace) -> None:
    from dmflow.lasso.settings import FitSettings
    from dmflow.stages.evaluate import learning_curve

    learning_curve(
        args.fit_store,
        args.eval_store,
        fractions=args.fractions,
        settings=FitSettings.from_config(args.fit),
        seed=args.seed,
        table=args.table,
        figure=args.figure,
        datamodels=args.datamodels,
        threads=args.threads,
    )


def cmd_counterfactual_design(args: argparse.Namespace) -> None:
    from dmflow.stages.counterfactual import counterfactual_design

    counterfactual_design(
        args.datamodels,
        alpha=args.alpha,
        num_targets=args.num_targets,
        ks=args.ks,
        seed=args.seed,
        masks_out=args.masks_out,
        cases_out=args.cases_out,
    )


def cmd_counterfactual_analyse(args: argparse.Namespace) -> None:
    from dmflow.stages.counterfactual import counterfactual_analyse

    counterfactual_analyse(
        args.cases,
        args.trained,
        changes=args.changes,
        flips=args.flips,
        brittleness=args.brittleness,
        summary=args.summary,
        figure=args.figure,
        brittleness_figure=args.brittleness_figure,
    )


def cmd_influencers(args: argparse.Namespace) -> None:
    from dmflow.stages.analysis import influencers

    influencers(
        args.datamodels,
        args.data,
        top_k=args.top_k,
        gallery_k=args.gallery_k,
        gallery_targets=args.gallery_targets,
        image_shape=args.image_shape,
        table=args.table,
        figure=args.figure,
    )


def cmd_leakage(args: argparse.Namespace) -> None:
    from dmflow.stages.analysis import leakage

    leakage(
        args.datamodels, args.data, pairs=args.pairs, image_shape=args.image_shape, table=args.table, figure=args.figure
    )


def cmd_embeddings(args: argparse.Namespace) -> None:
    from dmflow.stages.analysis import embeddings

    embeddings(
        args.datamodels,
        args.data,
        components=args.components,
        clusters=args.clusters,
        ends=args.ends,
        seed=args.seed,
        image_shape=args.image_shape,
        table=args.table,
        ends_table=args.ends_table,
        figure=args.figure,
        ends_figure=args.ends_figure,
    )


def cmd_summary(args: argparse.Namespace) -> None:
    from dmflow.stages.analysis import summary

    summary(args.results, args.alphas, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dmflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--kernels",
        default=None,
        metavar="SPEC",
        help="force the CPU-specific kernels: 'float32', or 'gram=int8,cross=float32,train=auto' (the config's "
        "kernels section; default: the environment's DMFLOW_KERNELS, else measured here)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a config file and print it with defaults")
    p.add_argument("config", type=Path)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("config-docs", help="print docs/configuration.md, generated from the config schema")
    p.set_defaults(func=cmd_config_docs)

    p = sub.add_parser("prepare-data", help="write data.npz from the dataset section")
    p.add_argument("--dataset", type=_json, required=True, help="the config's dataset section as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("synthetic-cifar10", help="write a synthetic folder in CIFAR-10's python format (demos, tests)")
    p.add_argument("--out", type=Path, required=True, help="folder to create (e.g. data/cifar-10-batches-py)")
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synthetic_cifar10)

    def chunk_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--alpha", type=float, required=True)
        p.add_argument("--split", choices=tuple(SPLITS), required=True)
        p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("make-masks", help="draw one chunk of subset masks")
    chunk_args(p)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--chunk", type=int, required=True)
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_make_masks)

    p = sub.add_parser("train-chunk", help="train every model of one chunk")
    chunk_args(p)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--masks", type=Path, required=True)
    p.add_argument("--chunk", type=int, required=True)
    p.add_argument("--replicates", type=int, default=1)
    p.add_argument("--model", type=_json, required=True, help="the config's model section as JSON")
    p.add_argument("--train", type=_json, required=True, help="the config's train section as JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_train_chunk)

    p = sub.add_parser("collect", help="validate a split's chunks and write its store")
    chunk_args(p)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--replicates", type=int, default=1)
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--masks", type=Path, nargs="+", required=True)
    p.add_argument("--trained", type=Path, nargs="+", required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument(
        "--max-diverged-fraction",
        type=float,
        default=0.05,
        help="fail, writing no store, above this share of diverged models",
    )
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("moments", help="the fit store's moments, once for every fit job")
    p.add_argument("--store", type=Path, required=True, help="the fit split's store folder")
    p.add_argument("--val-fraction", type=float, required=True, help="the config's fit.val_fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-mb", type=int, default=None, help="the job's memory: refuse at once if the moments need more")
    p.add_argument("--device", default="cpu", help="the config's fit.device: where the products run (auto, cpu, cuda)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(func=cmd_moments)

    p = sub.add_parser("fit-block", help="fit the datamodels of one block of targets")
    p.add_argument("--moments", type=Path, required=True, help="the fit store's moments folder")
    p.add_argument("--store-manifest", type=Path, default=None, help="the fit store's manifest the moments must match")
    p.add_argument("--block", type=int, required=True)
    p.add_argument("--targets-per-job", type=int, required=True)
    p.add_argument("--fit", type=_json, required=True, help="the config's fit section as JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-mb", type=int, default=None, help="the job's memory: refuse at once if a block needs more")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_fit_block)

    p = sub.add_parser("merge-fit", help="merge fitted blocks into one datamodels file")
    p.add_argument("--data", type=Path, default=None, help="data.npz (target and training ids; else 0..T-1, 0..n-1)")
    p.add_argument("--blocks", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_merge_fit)

    p = sub.add_parser("evaluate", help="score datamodels on the eval store")
    p.add_argument("--datamodels", type=Path, required=True)
    p.add_argument("--eval-store", type=Path, required=True)
    p.add_argument("--table", type=Path, required=True, help="per-target table (.parquet or .csv)")
    p.add_argument("--summary", type=Path, required=True, help="summary.json")
    p.add_argument("--figure", type=Path, required=True, help="predicted-vs-actual figure (.png)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "score-attribution", help="score any attribution [n, T] on a run's eval store, as the datamodels are"
    )
    p.add_argument("--run", type=Path, required=True, help="the run's results folder")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument(
        "--scores", type=Path, required=True, help=".npy, int or float [n, T]: example i's score for target t"
    )
    p.add_argument("--name", required=True, help="the method's name: evaluation/{alpha}/methods/{name}.csv and .json")
    p.add_argument(
        "--transpose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the scores are [T, n] (--no-transpose: [n, T]; neither: [n, T] when it fits, else [T, n])",
    )
    p.set_defaults(func=cmd_score_attribution)

    p = sub.add_parser(
        "baseline-scores",
        help="one baseline attribution [n, T] (TRAK, input similarity), its curve over the model count and its record",
    )
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--method", choices=BASELINE_METHODS, required=True)
    p.add_argument("--model", type=_json, required=True, help="the config's model section as JSON")
    p.add_argument("--train", type=_json, required=True, help="the config's train section as JSON")
    p.add_argument("--baselines", type=_json, required=True, help="the config's baselines section as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scores", type=Path, required=True, help="where to write the scores, float32 [n, T] (.npy)")
    p.add_argument("--info", type=Path, required=True, help="where to write the record (.json)")
    p.add_argument(
        "--curve",
        type=Path,
        help="where to write the scores of the smaller points of its curve over the model count, float32 [P, n, T] (.npy)",
    )
    p.set_defaults(func=cmd_baseline_scores)

    p = sub.add_parser(
        "compare-methods", help="score the baselines on a run's eval store and compare every method by compute"
    )
    p.add_argument("--run", type=Path, required=True, help="the run's results folder")
    p.add_argument("--alpha", required=True)
    p.add_argument("--methods", nargs="+", choices=BASELINE_METHODS, required=True)
    p.add_argument("--table", type=Path, required=True)
    p.add_argument("--figure", type=Path, required=True)
    p.set_defaults(func=cmd_compare_methods)

    p = sub.add_parser("import-store", help="write a store from masks and margins trained elsewhere (.npy files)")
    p.add_argument(
        "--source", type=Path, default=None, help="folder of masks.npy, margins.npy [, status.npy, seeds.npy]"
    )
    p.add_argument("--masks", type=Path, default=None, help="bool or 0/1 [m, n]")
    p.add_argument("--margins", type=Path, default=None, help="float [m, T] or [m, R, T]")
    p.add_argument(
        "--status", type=Path, default=None, help="0 ok / 1 diverged [m, R] (default: non-finite = diverged)"
    )
    p.add_argument("--seeds", type=Path, default=None, help="int [m, R] (default: -1, unknown)")
    p.add_argument("--alpha", type=float, required=True, help="every mask row holds round(alpha * n) ones")
    p.add_argument("--split", choices=("fit", "eval"), required=True)
    p.add_argument("--max-diverged-fraction", type=float, default=0.05)
    p.add_argument("--out-dir", type=Path, required=True, help="the store folder, e.g. results/x/store/0.5/fit")
    p.set_defaults(func=cmd_import_store)

    p = sub.add_parser("export", help="write a run's datamodels in another tool's format")
    p.add_argument("--format", choices=("madrylab",), required=True, help="madrylab: torch .pt {weight, bias, lam}")
    p.add_argument("--run", type=Path, default=None, help="the run's results folder (with --alpha)")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--datamodels", type=Path, default=None, help="a datamodels .npz instead of --run and --alpha")
    p.add_argument("--out", type=Path, required=True, help="a new file outside the run's results folder")
    p.add_argument("--force", action="store_true", help="replace --out if it is an existing regular file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("learning-curve", help="refit on fractions of the fit models and score each")
    p.add_argument("--fit-store", type=Path, required=True)
    p.add_argument("--eval-store", type=Path, required=True)
    p.add_argument("--fractions", type=float, nargs="+", required=True)
    p.add_argument("--datamodels", type=Path, default=None, help="the fit on all rows, reused for fraction 1.0")
    p.add_argument("--fit", type=_json, required=True, help="the config's fit section as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", type=Path, required=True)
    p.add_argument("--figure", type=Path, required=True)
    p.set_defaults(func=cmd_learning_curve)

    p = sub.add_parser("counterfactual-design", help="masks that remove each target's top-k (and k random) examples")
    p.add_argument("--datamodels", type=Path, required=True)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--num-targets", type=int, required=True)
    p.add_argument("--ks", type=int, nargs="+", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--masks-out", type=Path, required=True)
    p.add_argument("--cases-out", type=Path, required=True)
    p.set_defaults(func=cmd_counterfactual_design)

    p = sub.add_parser("counterfactual-analyse", help="actual vs predicted changes, flips, brittleness")
    p.add_argument("--cases", type=Path, required=True)
    p.add_argument("--trained", type=Path, required=True)
    for name in ("changes", "flips", "brittleness", "summary", "figure", "brittleness-figure"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.set_defaults(func=cmd_counterfactual_analyse)

    def analysis_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--datamodels", type=Path, required=True)
        p.add_argument("--data", type=Path, required=True)
        p.add_argument("--image-shape", type=int, nargs="*", default=None, help="view samples as images of this shape")
        p.add_argument("--table", type=Path, required=True)
        p.add_argument("--figure", type=Path, required=True)

    p = sub.add_parser("influencers", help="top helpers and harmers of every target, and a gallery")
    analysis_args(p)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--gallery-k", type=int, default=5)
    p.add_argument("--gallery-targets", type=int, default=8)
    p.set_defaults(func=cmd_influencers)

    p = sub.add_parser("leakage", help="train-test leakage candidates, ranked")
    analysis_args(p)
    p.add_argument("--pairs", type=int, default=20, help="pairs shown in the gallery")
    p.set_defaults(func=cmd_leakage)

    p = sub.add_parser("embeddings", help="PCA and spectral clusters of normalised datamodels")
    analysis_args(p)
    p.add_argument("--components", type=int, default=4)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--ends", type=int, default=6, help="training examples shown at each end of a component")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ends-table", type=Path, required=True)
    p.add_argument("--ends-figure", type=Path, required=True)
    p.set_defaults(func=cmd_embeddings)

    p = sub.add_parser("summary", help="write summary.md from a finished run")
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--alphas", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command; a config, data, device or store problem ends it with one line (exit status 1)."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    warnings.showwarning = _warning_line
    try:
        if args.kernels is not None:
            kernels.force(args.kernels)
        args.func(args)
    except ConfigError as exc:
        raise SystemExit(f"dmflow: config error: {exc}") from None
    except (StoreError, DataError, DeviceError, kernels.KernelError, FileError) as exc:
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


if __name__ == "__main__":
    main()
