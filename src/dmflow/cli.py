"""Command line: ``dmflow <stage> ...`` runs one stage without Snakemake.

The Snakemake rules call exactly these commands, so a stage behaves the same from
a rule, a shell or another workflow engine. Settings that come from a config
section are passed as one JSON object (``--train '{"epochs": 20, ...}'``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from dmflow import __version__


def _json(text: str) -> dict:
    return json.loads(text)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_check_config(args: argparse.Namespace) -> None:
    from dmflow.config import load_config

    cfg = load_config(args.config)
    print(json.dumps(cfg, indent=2, sort_keys=True))


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from dmflow.data import write_data

    arrays = write_data(args.out, args.dataset, args.seed)
    logging.info("wrote %s: %d training examples, %d targets", args.out, len(arrays["y_train"]), len(arrays["y_target"]))


def cmd_synthetic_cifar10(args: argparse.Namespace) -> None:
    from dmflow.data import synthetic_images, write_cifar10_folder

    x, y = synthetic_images(args.train + args.test, args.classes, args.seed)
    folder = write_cifar10_folder(args.out, x[: args.train], y[: args.train], x[args.train :], y[args.train :])
    logging.info("wrote a synthetic CIFAR-10-format folder %s: %d training and %d test images", folder, args.train, args.test)


def cmd_make_masks(args: argparse.Namespace) -> None:
    import numpy as np

    from dmflow.masks import write_chunk_masks

    with np.load(args.data, allow_pickle=False) as f:
        n = f["y_train"].shape[0]
    write_chunk_masks(args.out, n, args.alpha, args.split, args.chunk, args.chunk_size, args.seed)


def cmd_train_chunk(args: argparse.Namespace) -> None:
    from dmflow.train import TrainSettings, run_train_chunk

    settings = TrainSettings.from_config(args.model, args.train)
    run_train_chunk(
        args.data, args.masks, args.out, args.seed, args.alpha, args.split, args.chunk,
        args.replicates, settings, args.threads,
    )


def _chunk_index(path: str) -> int:
    """A chunk's index: the number that ends its masks file name (``.../00012.npy`` -> 12)."""
    match = re.search(r"(\d+)$", Path(path).stem)
    if not match:
        raise SystemExit(f"dmflow collect: {path}: the masks file name must end in the chunk index")
    return int(match.group(1))


def cmd_collect(args: argparse.Namespace) -> None:
    import numpy as np

    from dmflow.store import ChunkSpec, StoreError, collect

    if len(args.masks) != len(args.trained):
        raise SystemExit("dmflow collect: --masks and --trained need the same number of files")
    with np.load(args.data, allow_pickle=False) as f:
        n, num_targets = f["y_train"].shape[0], f["y_target"].shape[0]
    specs = [ChunkSpec(_chunk_index(m), Path(m), Path(t)) for m, t in zip(args.masks, args.trained)]
    try:
        collect(specs, args.out_dir, n, args.alpha, args.split, args.seed, args.replicates, num_targets, args.chunk_size,
                args.max_diverged_fraction)
    except StoreError as exc:
        raise SystemExit(f"dmflow collect: {exc}") from None


def cmd_fit_block(args: argparse.Namespace) -> None:
    from dmflow.fit import FitSettings, run_fit_block
    from dmflow.store import StoreError

    try:
        run_fit_block(args.store, args.out, args.block, args.targets_per_job, FitSettings.from_config(args.fit), args.seed, args.threads)
    except StoreError as exc:
        raise SystemExit(f"dmflow fit-block: {exc}") from None


def cmd_merge_fit(args: argparse.Namespace) -> None:
    from dmflow.fit import merge_blocks

    merge_blocks(args.blocks, args.data, args.out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dmflow.evaluate import run_evaluate

    run_evaluate(args.datamodels, args.eval_store, args.table, args.summary, args.figure)


def cmd_learning_curve(args: argparse.Namespace) -> None:
    import torch

    from dmflow.fit import FitSettings
    from dmflow.learning_curve import run_learning_curve

    torch.set_num_threads(max(1, args.threads))
    run_learning_curve(args.fit_store, args.eval_store, args.fractions, FitSettings.from_config(args.fit), args.seed,
                       args.table, args.figure, args.datamodels)


def cmd_counterfactual_design(args: argparse.Namespace) -> None:
    from dmflow.counterfactual import run_design

    run_design(args.datamodels, args.data, args.alpha, args.num_targets, args.ks, args.seed, args.masks_out, args.cases_out)


def cmd_counterfactual_analyse(args: argparse.Namespace) -> None:
    from dmflow.counterfactual import run_analyse

    run_analyse(args.cases, args.trained, args.changes, args.flips, args.brittleness, args.summary, args.figure,
                args.brittleness_figure)


def cmd_influencers(args: argparse.Namespace) -> None:
    from dmflow.influence import run_influencers

    run_influencers(args.datamodels, args.data, args.top_k, args.gallery_k, args.gallery_targets, args.image_shape,
                    args.table, args.figure)


def cmd_leakage(args: argparse.Namespace) -> None:
    from dmflow.leakage import run_leakage

    run_leakage(args.datamodels, args.data, args.pairs, args.image_shape, args.table, args.figure)


def cmd_embeddings(args: argparse.Namespace) -> None:
    from dmflow.embeddings import run_embeddings

    run_embeddings(args.datamodels, args.data, args.components, args.clusters, args.ends, args.seed, args.image_shape,
                   args.table, args.ends_table, args.figure, args.ends_figure)


def cmd_summary(args: argparse.Namespace) -> None:
    from dmflow.summary import write_summary

    write_summary(args.results, args.alphas, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dmflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a config file and print it with defaults")
    p.add_argument("config", type=Path)
    p.set_defaults(func=cmd_check_config)

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
        p.add_argument("--split", choices=("fit", "eval", "counterfactual"), required=True)
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
    p.add_argument("--max-diverged-fraction", type=float, default=0.05, help="warn above this share of diverged models")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("fit-block", help="fit the datamodels of one block of targets")
    p.add_argument("--store", type=Path, required=True, help="the fit split's store folder")
    p.add_argument("--block", type=int, required=True)
    p.add_argument("--targets-per-job", type=int, required=True)
    p.add_argument("--fit", type=_json, required=True, help="the config's fit section as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_fit_block)

    p = sub.add_parser("merge-fit", help="merge fitted blocks into one datamodels file")
    p.add_argument("--data", type=Path, required=True)
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
    p.add_argument("--data", type=Path, required=True)
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
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from dmflow.config import ConfigError

    try:
        args.func(args)
    except ConfigError as exc:
        raise SystemExit(f"dmflow: config error: {exc}") from None


if __name__ == "__main__":
    main()
