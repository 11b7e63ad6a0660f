rule evaluate:
    input:
        datamodels=f"{RESULTS}/datamodels/{{alpha}}.npz",
        manifest=f"{RESULTS}/store/{{alpha}}/eval/manifest.json",
        arrays=store_files("{alpha}", "eval"),
    output:
        table=f"{RESULTS}/evaluation/{{alpha}}/targets.parquet",
        summary=f"{RESULTS}/evaluation/{{alpha}}/summary.json",
        figure=report(
            f"{RESULTS}/evaluation/{{alpha}}/predicted_vs_actual.png",
            caption="../report/predicted_vs_actual.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/evaluate/{{alpha}}.log",
    shell:
        "{DMFLOW} evaluate --datamodels {input.datamodels:q} --eval-store $(dirname {input.manifest:q})"
        " --table {output.table:q} --summary {output.summary:q} --figure {output.figure:q} 2> {log:q}"


rule learning_curve:
    input:
        fit_manifest=f"{RESULTS}/store/{{alpha}}/fit/manifest.json",
        fit_arrays=store_files("{alpha}", "fit"),
        eval_manifest=f"{RESULTS}/store/{{alpha}}/eval/manifest.json",
        eval_arrays=store_files("{alpha}", "eval"),
        datamodels=f"{RESULTS}/datamodels/{{alpha}}.npz",
    output:
        table=report(
            f"{RESULTS}/evaluation/{{alpha}}/learning_curve.csv",
            caption="../report/learning_curve_table.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
        figure=report(
            f"{RESULTS}/evaluation/{{alpha}}/learning_curve.png",
            caption="../report/learning_curve.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/learning_curve/{{alpha}}.log",
    threads: config["fit"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: fit_mem_mb(all_targets=True) * attempt,
    params:
        fractions=" ".join(str(f) for f in config["evaluate"]["learning_curve"]),
        fit=section_json("fit"),
        seed=SEED,
    shell:
        "{DMFLOW} learning-curve --fit-store $(dirname {input.fit_manifest:q}) --eval-store $(dirname {input.eval_manifest:q})"
        " --fractions {params.fractions} --datamodels {input.datamodels:q} --fit {params.fit:q} --seed {params.seed} --threads {threads}"
        " --table {output.table:q} --figure {output.figure:q} 2> {log:q}"
