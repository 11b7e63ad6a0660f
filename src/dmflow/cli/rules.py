"""The commands the Snakemake rules run: one per rule, named as the rule with dashes.

Each calls the stage function of the same name (``dmflow.stages``), so a stage behaves the
same from a rule, a shell or another workflow engine. A config section travels as one JSON
object (``--train '{"epochs": 20, ...}'``). Each function imports its stage when it runs:
a command loads only the libraries its stage needs (torch and Lightning take seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dmflow.attribution import BASELINE_METHODS
from dmflow.cli.command import Argument, Commands, arg, json_section, schema_default
from dmflow.core.device import resolve_device
from dmflow.core.schema import defaults
from dmflow.core.seeds import FIT_REPLICATES, SPLITS

COMMANDS = Commands()

SEED = arg("--seed", type=int, default=schema_default("seed"), help="the config's seed (default: %(default)s)")
DATA = arg("--data", type=Path, required=True, help="the run's data.npz (from prepare-data)")
ALPHA = arg(
    "--alpha", type=float, required=True, help="the subset fraction: every subset has round(alpha * n) examples"
)
SPLIT = arg("--split", choices=tuple(SPLITS), required=True, help="which masks: %(choices)s")
CHUNK = arg("--chunk", type=int, required=True, help="the chunk's number within its split (0, 1, ...)")
REPLICATES = arg(
    "--replicates",
    type=int,
    default=FIT_REPLICATES,
    help="models trained per mask, each with its own seed (default: %(default)s, as the fit split)",
)
MAX_DIVERGED = arg(
    "--max-diverged-fraction",
    type=float,
    default=schema_default("train", "max_diverged_fraction"),
    help="fail, writing no store, above this share of diverged models (train.max_diverged_fraction; "
    "default: %(default)s)",
)


def section(name: str) -> Argument:
    """``--NAME``: the config's section ``NAME`` as JSON; keys it leaves out take the schema's defaults
    (the rules leave out those that change no result, and those added later while at their default)."""

    def parse(text: str) -> dict:
        return {**defaults(name), **json_section(text)}

    parse.__name__ = "json_section"  # argparse names the type in its error line
    return arg(f"--{name}", type=parse, required=True, help=f"the config's {name} section as JSON")


def threads(section_name: str) -> Argument:
    """``--threads`` with the default of ``SECTION.threads``."""
    return arg(
        "--threads",
        type=int,
        default=schema_default(section_name, "threads"),
        help=f"torch threads ({section_name}.threads; default: %(default)s)",
    )


def out(what: str) -> Argument:
    """``--out FILE``."""
    return arg("--out", type=Path, required=True, help=f"where to write {what}")


@COMMANDS.command(
    "prepare-data",
    "write data.npz from the dataset section",
    section("dataset"),
    SEED,
    out("data.npz"),
)
def prepare_data(args: argparse.Namespace) -> None:
    """Rule prepare_data."""
    from dmflow.stages.data import prepare_data

    prepare_data(args.dataset, args.seed, args.out)


@COMMANDS.command(
    "make-masks",
    "draw one chunk of subset masks",
    ALPHA,
    SPLIT,
    SEED,
    DATA,
    CHUNK,
    arg("--chunk-size", type=int, required=True, help="masks in the chunk (rows of the file)"),
    out("the masks, bool [chunk_size, n] (.npy)"),
)
def make_masks(args: argparse.Namespace) -> None:
    """Rule make_masks."""
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


@COMMANDS.command(
    "train-chunk",
    "train every model of one chunk",
    ALPHA,
    SPLIT,
    SEED,
    DATA,
    arg("--masks", type=Path, required=True, help="the chunk's masks (.npy, from make-masks)"),
    CHUNK,
    REPLICATES,
    section("model"),
    section("train"),
    threads("train"),
    out("the margins, accuracies, seeds and status of the chunk's models (.npz)"),
)
def train_chunk(args: argparse.Namespace) -> None:
    """Rule train_chunk."""
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


@COMMANDS.command(
    "collect",
    "validate a split's chunks and write its store",
    ALPHA,
    SPLIT,
    SEED,
    DATA,
    REPLICATES,
    arg("--chunk-size", type=int, required=True, help="masks per chunk of this split"),
    arg("--masks", type=Path, nargs="+", required=True, help="every mask chunk of the split, in chunk order"),
    arg("--trained", type=Path, nargs="+", required=True, help="every trained chunk of the split, in chunk order"),
    arg("--out-dir", type=Path, required=True, help="the store folder to write"),
    MAX_DIVERGED,
)
def collect(args: argparse.Namespace) -> None:
    """Rule collect."""
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


@COMMANDS.command(
    "moments",
    "the fit store's moments, once for every fit job",
    arg("--store", type=Path, required=True, help="the fit split's store folder"),
    arg("--val-fraction", type=float, required=True, help="the config's fit.val_fraction"),
    SEED,
    threads("fit"),
    arg("--mem-mb", type=int, default=None, help="the job's memory: refuse at once if the moments need more"),
    arg(
        "--device",
        default=schema_default("fit", "device"),
        help="the config's fit.device: where the products run, auto, cpu or cuda (default: %(default)s)",
    ),
    arg("--out-dir", type=Path, required=True, help="the moments folder to write"),
)
def moments(args: argparse.Namespace) -> None:
    """Rule moments."""
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


@COMMANDS.command(
    "fit-block",
    "fit the datamodels of one block of targets",
    arg("--moments", type=Path, required=True, help="the fit store's moments folder"),
    arg("--store-manifest", type=Path, default=None, help="the fit store's manifest the moments must match"),
    arg("--block", type=int, required=True, help="the block's number: targets block*T..(block+1)*T-1"),
    arg("--targets-per-job", type=int, required=True, help="T, targets per block (the config's fit.targets_per_job)"),
    section("fit"),
    threads("fit"),
    arg("--mem-mb", type=int, default=None, help="the job's memory: refuse at once if a block needs more"),
    out("the block's weights, biases, lambdas and path statistics (.npz)"),
)
def fit_block(args: argparse.Namespace) -> None:
    """Rule fit_block."""
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


@COMMANDS.command(
    "merge-fit",
    "merge fitted blocks into one datamodels file",
    arg("--data", type=Path, default=None, help="data.npz (target and training ids; else 0..T-1, 0..n-1)"),
    arg("--blocks", type=Path, nargs="+", required=True, help="every block of fit-block, in block order"),
    out("the datamodels (.npz)"),
)
def merge_fit(args: argparse.Namespace) -> None:
    """Rule merge_fit."""
    from dmflow.stages.fit import merge_fit

    merge_fit(args.blocks, args.data, args.out)


@COMMANDS.command(
    "evaluate",
    "score datamodels on the eval store",
    arg("--datamodels", type=Path, required=True, help="the datamodels (.npz)"),
    arg("--eval-store", type=Path, required=True, help="the eval split's store folder"),
    arg("--table", type=Path, required=True, help="per-target table (.parquet or .csv)"),
    arg("--summary", type=Path, required=True, help="summary.json"),
    arg("--figure", type=Path, required=True, help="predicted-vs-actual figure (.png)"),
)
def evaluate(args: argparse.Namespace) -> None:
    """Rule evaluate."""
    from dmflow.stages.evaluate import evaluate

    evaluate(args.datamodels, args.eval_store, table=args.table, summary=args.summary, figure=args.figure)


@COMMANDS.command(
    "learning-curve",
    "refit on fractions of the fit models and score each",
    arg("--fit-store", type=Path, required=True, help="the fit split's store folder"),
    arg("--eval-store", type=Path, required=True, help="the eval split's store folder"),
    arg("--fractions", type=float, nargs="+", required=True, help="the config's evaluate.learning_curve"),
    arg("--datamodels", type=Path, default=None, help="the fit on all rows, reused for fraction 1.0"),
    section("fit"),
    SEED,
    threads("fit"),
    arg("--table", type=Path, required=True, help="the curve's table (.csv)"),
    arg("--figure", type=Path, required=True, help="the curve's figure (.png)"),
)
def learning_curve(args: argparse.Namespace) -> None:
    """Rule learning_curve."""
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


@COMMANDS.command(
    "baseline-scores",
    "one baseline attribution [n, T] (TRAK, input similarity), its curve over the model count and its record",
    DATA,
    arg("--method", choices=BASELINE_METHODS, required=True, help="the baseline: %(choices)s"),
    section("model"),
    section("train"),
    section("baselines"),
    SEED,
    threads("baselines"),
    arg("--scores", type=Path, required=True, help="where to write the scores, float32 [n, T] (.npy)"),
    arg("--info", type=Path, required=True, help="where to write the record (.json)"),
    arg(
        "--curve",
        type=Path,
        help="where to write the scores of the smaller points of its curve over the model count, "
        "float32 [P, n, T] (.npy)",
    ),
)
def baseline_scores(args: argparse.Namespace) -> None:
    """Rule baseline_scores."""
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


@COMMANDS.command(
    "compare-methods",
    "score the baselines on a run's eval store and compare every method by compute",
    arg("--run", type=Path, required=True, help="the run's results folder"),
    arg("--alpha", required=True, help="the alpha as the results folder names it (e.g. 0.5)"),
    arg(
        "--methods",
        nargs="+",
        choices=BASELINE_METHODS,
        required=True,
        help="the baselines to compare with the datamodels: %(choices)s",
    ),
    arg("--table", type=Path, required=True, help="the comparison table (.csv)"),
    arg("--figure", type=Path, required=True, help="the comparison figure (.png)"),
)
def compare_methods(args: argparse.Namespace) -> None:
    """Rule compare_methods."""
    from dmflow.stages.baselines import compare_methods

    compare_methods(args.run, alpha=args.alpha, methods=args.methods, table=args.table, figure=args.figure)


@COMMANDS.command(
    "counterfactual-design",
    "masks that remove each target's top-k (and k random) examples",
    arg("--datamodels", type=Path, required=True, help="the datamodels (.npz)"),
    ALPHA,
    arg("--num-targets", type=int, required=True, help="the config's counterfactual.num_targets"),
    arg("--ks", type=int, nargs="+", required=True, help="the config's counterfactual.ks"),
    SEED,
    arg("--masks-out", type=Path, required=True, help="where to write the masks to retrain (.npy)"),
    arg("--cases-out", type=Path, required=True, help="where to write the case table (.csv)"),
)
def counterfactual_design(args: argparse.Namespace) -> None:
    """Rule counterfactual_design."""
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


@COMMANDS.command(
    "counterfactual-analyse",
    "actual vs predicted changes, flips, brittleness",
    arg("--cases", type=Path, required=True, help="the case table of counterfactual-design"),
    arg("--trained", type=Path, required=True, help="the retrained counterfactual chunk (.npz)"),
    arg("--changes", type=Path, required=True, help="where to write actual vs predicted change per case (.csv)"),
    arg("--flips", type=Path, required=True, help="where to write the flip rates per k (.csv)"),
    arg("--brittleness", type=Path, required=True, help="where to write the smallest flipping k per target (.csv)"),
    arg("--summary", type=Path, required=True, help="where to write the headline numbers (.json)"),
    arg("--figure", type=Path, required=True, help="where to draw actual vs predicted and the flip rates (.png)"),
    arg("--brittleness-figure", type=Path, required=True, help="where to draw the brittleness histogram (.png)"),
)
def counterfactual_analyse(args: argparse.Namespace) -> None:
    """Rule counterfactual_analyse."""
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


ANALYSIS = (
    arg("--datamodels", type=Path, required=True, help="the datamodels (.npz)"),
    DATA,
    arg(
        "--image-shape",
        type=int,
        nargs="*",
        default=None,
        help="view samples as images of this shape (the config's dataset.image_shape)",
    ),
    arg("--table", type=Path, required=True, help="where to write the table (.csv or .parquet)"),
    arg("--figure", type=Path, required=True, help="where to draw the figure (.png)"),
)


def _analysis(key: str, flag: str, help: str) -> Argument:
    """``--FLAG`` of an analysis command, defaulting to the config's ``analysis.KEY``."""
    return arg(
        flag, type=int, default=schema_default("analysis", key), help=f"{help} (analysis.{key}; default: %(default)s)"
    )


@COMMANDS.command(
    "influencers",
    "top helpers and harmers of every target, and a gallery",
    *ANALYSIS,
    _analysis("top_k", "--top-k", "helpers and harmers per target in the table"),
    _analysis("gallery_k", "--gallery-k", "helpers and harmers shown per gallery target"),
    _analysis("gallery_targets", "--gallery-targets", "targets shown in the gallery"),
)
def influencers(args: argparse.Namespace) -> None:
    """Rule influencers."""
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


@COMMANDS.command(
    "leakage",
    "train-test leakage candidates, ranked, and whether any stands out",
    *ANALYSIS,
    _analysis("leakage_pairs", "--pairs", "pairs shown in the gallery"),
)
def leakage(args: argparse.Namespace) -> None:
    """Rule leakage."""
    from dmflow.stages.analysis import leakage

    leakage(
        args.datamodels, args.data, pairs=args.pairs, image_shape=args.image_shape, table=args.table, figure=args.figure
    )


@COMMANDS.command(
    "embeddings",
    "PCA and spectral clusters of normalised datamodels",
    *ANALYSIS,
    _analysis("components", "--components", "principal components"),
    _analysis("clusters", "--clusters", "spectral clusters"),
    _analysis("component_ends", "--ends", "training examples shown at each end of a component"),
    SEED,
    arg("--ends-table", type=Path, required=True, help="where to write the component ends (.csv)"),
    arg("--ends-figure", type=Path, required=True, help="where to draw the component ends (.png)"),
)
def embeddings(args: argparse.Namespace) -> None:
    """Rule embeddings."""
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


def _rule_mb(text: str) -> tuple[str, float]:
    rule, _, mb = text.partition("=")
    try:
        return rule, float(mb)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give RULE=MB, e.g. train_chunk=2000") from None


@COMMANDS.command(
    "summary",
    "write summary.md from a finished run",
    arg("--results", type=Path, required=True, help="the run's results folder"),
    arg("--alphas", nargs="+", required=True, help="the alphas as the results folder names them (e.g. 0.5)"),
    arg(
        "--mem-mb",
        nargs="*",
        type=_rule_mb,
        default=[],
        metavar="RULE=MB",
        help="the mem_mb each benchmarked rule asks for, compared with its max RSS",
    ),
    out("summary.md"),
)
def summary(args: argparse.Namespace) -> None:
    """Rule summary."""
    from dmflow.stages.analysis import summary

    summary(args.results, args.alphas, args.out, mem_mb=dict(args.mem_mb))
