"""Rules of ``rules/analysis.smk``: ``influencers``, ``leakage`` and ``embeddings`` answer
questions from the datamodels; ``summary`` writes ``summary.md`` from a finished run."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmflow.analysis import embeddings as emb
from dmflow.analysis import influence
from dmflow.analysis import leakage as leak
from dmflow.core import provenance
from dmflow.core.errors import FileError
from dmflow.core.io import atomic_path, load_json, load_npz, save_figure, write_table
from dmflow.core.layout import Layout
from dmflow.core.tables import COMPARE, COMPONENT_ENDS, EMBEDDINGS, INFLUENCERS, LEAKAGE, LEARNING_CURVE, USAGE
from dmflow.data.prepare import as_images, source_features
from dmflow.evaluation.compare import equal_compute
from dmflow.evaluation.metrics import MIN_CEILING
from dmflow.plots import galleries
from dmflow.store.formats import open_datamodels

log = logging.getLogger(__name__)


def _source_images(arrays: dict[str, np.ndarray], image_shape: Sequence[int] | None) -> tuple:
    """(training, target) samples in the source's values as images [N, C, H, W], or (None, None)."""
    train, target = source_features(arrays)
    if "X_train_raw" not in arrays:
        log.warning("data.npz has no X_train_raw (written by an older dmflow): showing the standardised features")
    images = as_images(train, image_shape), as_images(target, image_shape)
    return images if images[0] is not None and images[1] is not None else (None, None)


def leakage_ranking(
    weight: np.ndarray, arrays: dict[str, np.ndarray], target_ids: np.ndarray, *, image_shape: Sequence[int] | None
) -> pd.DataFrame:
    """The leakage table of datamodels ``weight`` and the arrays of ``data.npz`` (the leakage rule's, and the API's)."""
    train, target = _source_images(arrays, image_shape)
    images = train is not None
    if not images:
        train, target = source_features(arrays)
    return leak.leakage_table(weight, arrays, target_ids, x_train=train, x_target=target, images=images)


def influencers(
    datamodels: Path,
    data: Path,
    *,
    top_k: int,
    gallery_k: int,
    gallery_targets: int,
    image_shape: Sequence[int] | None,
    table: Path,
    figure: Path,
) -> pd.DataFrame:
    """Write every target's top-k helpers and harmers, and a gallery of ``gallery_targets`` targets."""
    dm, arrays = open_datamodels(Path(datamodels)), load_npz(data)
    weight = dm.weight
    rows = influence.influencer_table(weight, arrays, dm.target_ids, k=top_k)
    write_table(INFLUENCERS.check(rows, where=table), table)
    shown = [
        (int(t), *influence.top_influencers(weight, int(t), gallery_k))
        for t in influence.gallery_targets(weight, gallery_targets)
    ]
    pics = galleries.pictures(*_source_images(arrays, image_shape))
    save_figure(
        galleries.influencer_gallery(shown, weight, arrays, target_ids=dm.target_ids, k=gallery_k, pics=pics),
        figure,
    )
    return rows


def leakage(
    datamodels: Path, data: Path, *, pairs: int, image_shape: Sequence[int] | None, table: Path, figure: Path
) -> pd.DataFrame:
    """Write the ranked leakage table (every target) and a gallery of the top ``pairs``."""
    dm, arrays = open_datamodels(Path(datamodels)), load_npz(data)
    ranked = leakage_ranking(dm.weight, arrays, dm.target_ids, image_shape=image_shape)
    write_table(LEAKAGE.check(ranked, where=table), table)
    pics = galleries.pictures(*_source_images(arrays, image_shape))
    save_figure(galleries.pair_gallery(ranked.head(pairs), pics, headline=leak.verdict(ranked)), figure)
    return ranked


def embeddings(
    datamodels: Path,
    data: Path,
    *,
    components: int,
    clusters: int,
    ends: int,
    seed: int,
    image_shape: Sequence[int] | None,
    table: Path,
    ends_table: Path,
    figure: Path,
    ends_figure: Path,
) -> pd.DataFrame:
    """Write per-target coordinates and clusters, the component ends, and their figures."""
    dm, arrays = open_datamodels(Path(datamodels)), load_npz(data)
    coords, loadings, ratio, labels = emb.embed(dm.weight, components=components, clusters=clusters, seed=seed)
    points = pd.DataFrame(coords, columns=[f"pc{i + 1}" for i in range(coords.shape[1])])
    points.insert(0, "target", np.arange(len(points)))
    points.insert(1, "target_id", dm.target_ids)
    points.insert(2, "label", arrays["y_target"])
    points["cluster"] = labels
    write_table(EMBEDDINGS.check(points, where=table), table)
    extremes = emb.component_ends(loadings, arrays["y_train"], arrays["train_ids"], k=ends)
    write_table(COMPONENT_ENDS.check(extremes, where=ends_table), ends_table)
    save_figure(galleries.embedding_scatter(points, ratio), figure)
    pics = galleries.pictures(*_source_images(arrays, image_shape))
    save_figure(galleries.component_ends_gallery(extremes, pics), ends_figure)
    return points


def _fmt(x: float | None) -> str:
    return f"n/a (ceiling < {MIN_CEILING})" if x is None else f"{x:.3f}"


def _compare_lines(table: pd.DataFrame) -> list[str]:
    """The comparison table (``evaluation/{alpha}/compare.csv``) as markdown lines."""
    lines = [
        "| method | models trained | seconds | LDS vs one seed | LDS vs seed mean | fraction of ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        seconds = "n/a" if pd.isna(r.seconds) else f"{r.seconds:.1f}" if r.seconds >= 1 else f"{r.seconds:.2g}"
        frac = None if pd.isna(r.fraction_of_ceiling) else float(r.fraction_of_ceiling)
        lines.append(
            f"| {r.method} | {r.models_trained} | {seconds} | {_fmt(r.lds_single)} | {_fmt(r.lds_mean)} | {_fmt(frac)} |"
        )
    return lines


def _slope_words(cf_summary: dict) -> str:
    """The slope of actual on predicted change as words, from the counterfactual summary (empty without it)."""
    slope = cf_summary.get("slope_actual_vs_predicted")
    if slope is None:
        return ""
    return f"; the actual changes are {slope:.2f}x the predicted ones (least-squares slope)"


def _support_lines(datamodels: Path) -> list[str]:
    """The datamodels' support size: non-zero weights per target, mean and median over targets, of n."""
    if not datamodels.exists():
        return []
    weight = load_npz(datamodels)["weight"]
    n = weight.shape[0]
    nonzero = (weight != 0).sum(axis=0)
    mean, median = float(nonzero.mean()), float(np.median(nonzero))
    words = "most weights are non-zero: these datamodels are not sparse" if mean >= n / 2 else "the rest are 0"
    return [
        f"Datamodel support: {mean:.0f} of n = {n} weights are non-zero per target on average "
        f"({mean / n:.0%}; median {median:.0f}); {words}.",
        "",
    ]


def _alpha_section(layout: Layout, alpha: str) -> list[str]:
    """The markdown lines of one alpha (the files it reads are optional but the evaluation's summary)."""
    link = layout.relative
    ev = load_json(Path(layout.eval_summary(alpha)))
    lines = [f"## alpha = {alpha}", ""]
    c = ev["counts"]
    lines += [
        f"Held-out evaluation on {c['eval_masks']} eval masks x {c['replicates']} seeds, {c['targets']} targets "
        f"({c['diverged_models_excluded']} diverged models excluded):",
        "",
        "| score (mean over targets) | vs one seed | vs seed mean |",
        "|---|---|---|",
        f"| LDS (Spearman) | {_fmt(ev['lds_single']['mean'])} | {_fmt(ev['lds_mean']['mean'])} |",
        f"| Pearson | {_fmt(ev['pearson_single']['mean'])} | {_fmt(ev['pearson_mean']['mean'])} |",
        f"| noise ceiling | {_fmt(ev['ceiling_single']['mean'])} | {_fmt(ev['ceiling_mean']['mean'])} |",
        f"| fraction of ceiling (Pearson) | {_fmt(ev['fraction_of_ceiling']['pearson_single'])} | {_fmt(ev['fraction_of_ceiling']['pearson_mean'])} |",
        "",
        f"Two retrainings of the same mask agree at r = {_fmt(ev['replicate_corr']['mean'])}.",
        "",
        *_support_lines(Path(layout.datamodels(alpha))),
        f"Figures: [predicted vs actual]({link(layout.eval_figure(alpha))}), "
        f"table: [per target]({link(layout.eval_table(alpha))}).",
        "",
    ]
    curve = Path(layout.curve_table(alpha))
    if curve.exists():
        lc = LEARNING_CURVE.read(curve)
        lines += [
            "Learning curve (LDS vs seed mean): "
            + ", ".join(f"{int(r.num_models)} models {_fmt(r.lds_mean)}" for r in lc.itertuples())
            + f" ([figure]({link(layout.curve_figure(alpha))})).",
            "",
        ]
    compare = Path(layout.compare_table(alpha))
    if compare.exists():
        lines += [
            "Datamodels vs baselines, by compute (seconds: training wall-seconds; fraction of ceiling: Pearson vs "
            f"seed mean) ([figure]({link(layout.compare_figure(alpha))}), [table]({link(str(compare))})):",
            "",
            *_compare_lines(compared := COMPARE.read(compare)),
            "",
        ]
        if verdict := equal_compute(compared, "trak"):
            lines += [verdict, ""]
    cf = Path(layout.cf_summary(alpha))
    if cf.exists():
        s = load_json(cf)
        lines += [
            f"Counterfactual retraining ({s['num_targets']} targets, {s['replicates']} seeds each): predicted vs actual "
            f"margin change r = {_fmt(s['correlation_predicted_actual'])}{_slope_words(s)}. "
            "Predictions flipped by removing the top-k "
            "helpers vs k random examples: "
            + ", ".join(
                f"k={k}: {_fmt(s['flip_rate_top'][k])} vs {_fmt(s['flip_rate_random'][k])}"
                for k in sorted(s["flip_rate_top"], key=int)
            )
            + f" ([figure]({link(layout.cf_figure(alpha))}), [brittleness]({link(layout.cf_brittleness_figure(alpha))})).",
            "",
        ]
    leak_table = Path(layout.leakage_table(alpha))
    if leak_table.exists():
        ranked = LEAKAGE.read(leak_table)
        if "stands_out" not in ranked:  # a table from before the robust z
            ranked["robust_z"] = leak.robust_z(ranked.score.to_numpy())
            ranked["stands_out"] = ranked.robust_z >= leak.STANDOUT_Z
        top = ranked.head(5)
        lines += [
            f"Leakage: {leak.verdict(ranked)}",
            "",
            ("Top leakage candidates" if top.stands_out.any() else "The closest pairs (ordinary near neighbours)")
            + " (target id -> training id: score and its robust z, input similarity and its rank, datamodel "
            "evidence, weight rank):",
            "",
        ]
        lines += [
            f"- {r.target_id} -> {r.train_id}: score {r.score:.3f} (z {r.robust_z:.1f}"
            f"{', stands out' if r.stands_out else ''}), similarity {r.similarity:.3f} "
            f"(rank {r.similarity_rank}), evidence {r.evidence:.2f}, weight rank {r.weight_rank}"
            for r in top.itertuples()
        ]
        lines += [
            "",
            f"Galleries: [influencers]({link(layout.influencers_figure(alpha))}), "
            f"[leakage]({link(layout.leakage_figure(alpha))}), [embeddings]({link(layout.embeddings_figure(alpha))}), "
            f"[component ends]({link(layout.ends_figure(alpha))}).",
            "",
        ]
    return lines


PROVENANCE_FIELDS = (
    *provenance.COMPARED[:2],
    "python",
    *provenance.PACKAGES,
    "cuda",
    "cudnn",
    "device",
    "cpu",
    "kernels",
)
"""The rows of summary.md's provenance tables."""


def _manifest_provenance(path: str) -> dict | None:
    """The provenance block of a JSON manifest or of a datamodels ``.npz``; None where there is none."""
    if not Path(path).is_file():
        return None
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                return provenance.read({"provenance": f["provenance"]}) if "provenance" in f.files else None
        except (OSError, ValueError):
            return None
    return provenance.read(Path(path))


def _cell(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value).replace("|", "/")


def _provenance_lines(layout: Layout, alphas: Sequence[str]) -> list[str]:
    """summary.md's provenance: per alpha, what made each result (``dmflow.core.provenance``)."""
    lines = ["## Provenance", "", "What computed each result (from its manifest; - where not recorded).", ""]
    for alpha in alphas:
        sources = {
            "store fit": layout.manifest(alpha, "fit"),
            "store eval": layout.manifest(alpha, "eval"),
            "moments": layout.moments_manifest(alpha),
            "datamodels": layout.datamodels(alpha),
            "evaluation": layout.eval_summary(alpha),
        }
        blocks = {name: _manifest_provenance(path) or {} for name, path in sources.items()}
        lines += [f"alpha = {alpha}:", "", "| | " + " | ".join(blocks) + " |", "|---" * (len(blocks) + 1) + "|"]
        lines += [
            f"| {key} | " + " | ".join(_cell(b.get(key)) for b in blocks.values()) + " |" for key in PROVENANCE_FIELDS
        ]
        lines.append("")
    return lines


def _benchmark_lines(layout: Layout, alphas: Sequence[str], mem_mb: Mapping[str, float]) -> list[str]:
    """summary.md's resources: each benchmarked rule's jobs, longest and peak memory (the usage records its
    commands write, ``dmflow --usage``) against the ``mem_mb`` it asked for, and the training seconds per model
    of each store."""
    rows = []
    folder = Path(layout.benchmarks())
    for rule_dir in sorted(p for p in folder.glob("*") if p.is_dir()) if folder.is_dir() else []:
        tables = []
        for tsv in sorted(rule_dir.rglob("*.tsv")):
            try:
                tables.append(USAGE.read(tsv))
            except FileError:
                continue  # an empty or foreign file: nothing measured
        if not tables:
            continue
        bench = pd.concat(tables)
        rss = pd.to_numeric(bench["max_rss"], errors="coerce").max()
        asked = mem_mb.get(rule_dir.name)
        share = f"{100 * rss / asked:.0f}%" if asked and np.isfinite(rss) else "-"
        rows.append(
            f"| {rule_dir.name} | {len(bench)} | {pd.to_numeric(bench['s'], errors='coerce').max():.1f} | "
            f"{rss:.0f} | {f'{asked:g}' if asked else 'not set'} | {share} |"
        )
    per_model = []
    for alpha in alphas:
        for split in ("fit", "eval"):
            path = Path(layout.manifest(alpha, split))
            if path.is_file() and (sec := load_json(path).get("train_seconds_per_model")) is not None:
                per_model.append(f"{alpha}/{split} {sec:.3g} s")
    if not rows and not per_model:
        return []
    lines = ["## Resources", ""]
    if rows:
        lines += [
            f"Per benchmarked rule (usage records under `{layout.relative(layout.benchmarks())}/`): jobs, the longest "
            "job's seconds, the largest max RSS (MB) against the `mem_mb` the rule asked for (first attempt):",
            "",
            "| rule | jobs | longest s | max RSS MB | mem_mb asked | RSS / asked |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    if per_model:
        lines += [
            "Training seconds per model (store manifests' `train_seconds_per_model`): " + ", ".join(per_model) + ".",
            "",
        ]
    return lines


def summary(results: Path, alphas: Sequence[str], out: Path, *, mem_mb: Mapping[str, float] | None = None) -> str:
    """Write ``summary.md``, the headline numbers and links of every alpha of a run, the resources its
    heavy rules used against the ``mem_mb`` ({rule: MB}) they asked for, and the provenance of its
    results; returns the text."""
    layout = Layout(results)
    lines = [
        "# dmflow run summary",
        "",
        "Numbers from this run's files; `snakemake --report report.html` shows every figure with captions.",
        "",
    ]
    for alpha in alphas:
        lines += _alpha_section(layout, alpha)
    lines += _benchmark_lines(layout, alphas, mem_mb or {})
    lines += _provenance_lines(layout, alphas)
    text = "\n".join(lines)
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(text)
    return text
