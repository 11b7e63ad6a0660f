# Baselines beside the datamodels (config `baselines`): each method's scores [n, T] once per
# run (TRAK's at each model count of `trak_models`, from one training of the largest), then per
# alpha scored on the eval store and compared with the datamodels by compute.

from dmflow.attribution import trak_counts
from dmflow.core.layout import baseline_point_names

# the names each baseline's points are scored under (evaluation/{alpha}/methods/NAME.*), ascending
BASELINE_POINTS = [
    name
    for m in BASELINES
    for name in baseline_point_names(m, trak_counts(config["baselines"]["trak_models"]) if m == "trak" else [0])
]


rule baseline_scores:
    input:
        data=L.data(),
    output:
        scores=L.baseline_scores("{method}"),
        info=L.baseline_info("{method}"),
        curve=L.baseline_curve("{method}"),
    log:
        L.log("baseline_scores", "{method}"),
    conda:
        CONDA_ENV
    threads: config["baselines"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: config["train"]["mem_mb"] * attempt,
        gpu=lambda wc: int(wc.method == "trak" and "cuda" in (config["baselines"]["device"], config["train"]["device"])),
    params:
        usage=L.benchmark("baseline_scores", "{method}"),
        model=section_json("model"),
        train=section_json("train"),
        baselines=section_json("baselines"),
        seed=SEED,
    shell:
        "dmflow --usage {params.usage:q} baseline-scores --data {input.data:q} --method {wildcards.method} --model {params.model:q}"
        " --train {params.train:q} --baselines {params.baselines:q} --seed {params.seed} --threads {threads}"
        " --scores {output.scores:q} --info {output.info:q} --curve {output.curve:q} 2> {log:q}"


rule compare_methods:
    input:
        scores=[L.baseline_scores(m) for m in BASELINES],
        infos=[L.baseline_info(m) for m in BASELINES],
        curves=[L.baseline_curve(m) for m in BASELINES],
        eval_summary=L.eval_summary("{alpha}"),
        fit_manifest=L.manifest("{alpha}", "fit"),
        eval_arrays=store_files("{alpha}", "eval"),
        curve=lambda wc: [L.curve_table(wc.alpha)] if config["evaluate"]["learning_curve"] else [],
    output:
        tables=[L.method_table("{alpha}", name) for name in BASELINE_POINTS],
        summaries=[L.method_summary("{alpha}", name) for name in BASELINE_POINTS],
        table=report(
            L.compare_table("{alpha}"),
            caption="../report/compare_table.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
        figure=report(
            L.compare_figure("{alpha}"),
            caption="../report/compare.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
    log:
        L.log("compare_methods", "{alpha}"),
    conda:
        CONDA_ENV
    params:
        results=lambda wc: L.results,
        methods=" ".join(BASELINES),
    shell:
        "dmflow compare-methods --run {params.results:q} --alpha {wildcards.alpha} --methods {params.methods}"
        " --table {output.table:q} --figure {output.figure:q} 2> {log:q}"
