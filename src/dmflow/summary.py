"""Rule summary: ``summary.md``, the headline numbers and links for people who never open the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dmflow.io import atomic_path


def _fmt(x: float | None) -> str:
    return "n/a (ceiling < 0.1)" if x is None else f"{x:.3f}"


def alpha_section(results: Path, alpha: str) -> list[str]:
    """The markdown lines of one alpha."""
    ev = json.loads((results / "evaluation" / alpha / "summary.json").read_text())
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
        f"Figures: [predicted vs actual](evaluation/{alpha}/predicted_vs_actual.png), "
        f"table: [per target](evaluation/{alpha}/targets.parquet).",
        "",
    ]
    curve = results / "evaluation" / alpha / "learning_curve.csv"
    if curve.exists():
        lc = pd.read_csv(curve)
        lines += ["Learning curve (LDS vs seed mean): " + ", ".join(
            f"{int(r.num_models)} models {_fmt(r.lds_mean)}" for r in lc.itertuples())
            + f" ([figure](evaluation/{alpha}/learning_curve.png)).", ""]
    cf = results / "counterfactual" / alpha / "summary.json"
    if cf.exists():
        s = json.loads(cf.read_text())
        lines += [
            f"Counterfactual retraining ({s['num_targets']} targets, {s['replicates']} seeds each): predicted vs actual "
            f"margin change r = {_fmt(s['correlation_predicted_actual'])}. Predictions flipped by removing the top-k "
            "helpers vs k random examples: " + ", ".join(
                f"k={k}: {_fmt(s['flip_rate_top'][k])} vs {_fmt(s['flip_rate_random'][k])}" for k in s["flip_rate_top"])
            + f" ([figure](counterfactual/{alpha}/counterfactual.png), [brittleness](counterfactual/{alpha}/brittleness.png)).",
            "",
        ]
    leak = results / "analysis" / alpha / "leakage.csv"
    if leak.exists():
        top = pd.read_csv(leak).head(5)
        lines += ["Top leakage candidates (target id -> training id, score, share, input similarity rank):", ""]
        lines += [f"- {r.target_id} -> {r.train_id}: score {r.score:.3f}, share {r.share:.2f}, similarity rank {r.similarity_rank}"
                  for r in top.itertuples()]
        lines += ["", f"Galleries: [influencers](analysis/{alpha}/influencers.png), [leakage](analysis/{alpha}/leakage.png), "
                  f"[embeddings](analysis/{alpha}/embeddings.png), [component ends](analysis/{alpha}/component_ends.png).", ""]
    return lines


def write_summary(results: Path, alphas: Sequence[str], out: Path) -> str:
    """Write ``summary.md`` for every alpha of a run; returns the text."""
    results = Path(results)
    lines = ["# dmflow run summary", "",
             "Numbers from this run's files; `snakemake --report report.html` shows every figure with captions.", ""]
    for alpha in alphas:
        lines += alpha_section(results, alpha)
    text = "\n".join(lines)
    with atomic_path(Path(out)) as tmp:
        tmp.write_text(text)
    return text
