rule evaluate:
    input:
        datamodels=L.datamodels("{alpha}"),
        manifest=L.manifest("{alpha}", "eval"),
        arrays=store_files("{alpha}", "eval"),
    output:
        table=L.eval_table("{alpha}"),
        summary=L.eval_summary("{alpha}"),
        figure=report(
            L.eval_figure("{alpha}"),
            caption="../report/predicted_vs_actual.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
    log:
        L.log("evaluate", "{alpha}"),
    conda:
        CONDA_ENV
    params:
        usage=L.benchmark("evaluate", "{alpha}"),
        eval_store=lambda wc: L.store(wc.alpha, "eval"),
    shell:
        "dmflow --usage {params.usage:q} evaluate --datamodels {input.datamodels:q} --eval-store {params.eval_store:q}"
        " --table {output.table:q} --summary {output.summary:q} --figure {output.figure:q} 2> {log:q}"


rule learning_curve:
    input:
        fit_manifest=L.manifest("{alpha}", "fit"),
        fit_arrays=store_files("{alpha}", "fit"),
        eval_manifest=L.manifest("{alpha}", "eval"),
        eval_arrays=store_files("{alpha}", "eval"),
        datamodels=L.datamodels("{alpha}"),
    output:
        table=report(
            L.curve_table("{alpha}"),
            caption="../report/learning_curve_table.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
        figure=report(
            L.curve_figure("{alpha}"),
            caption="../report/learning_curve.rst",
            category="Evaluation",
            subcategory="alpha {alpha}",
        ),
    log:
        L.log("learning_curve", "{alpha}"),
    conda:
        CONDA_ENV
    threads: config["fit"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: (moments_mem_mb() + fit_mem_mb(targets=CURVE_TARGETS_PER_PASS)) * attempt,
    params:
        fit_store=lambda wc: L.store(wc.alpha, "fit"),
        eval_store=lambda wc: L.store(wc.alpha, "eval"),
        fractions=" ".join(str(f) for f in config["evaluate"]["learning_curve"]),
        fit=section_json("fit"),
        seed=SEED,
        kernels=KERNELS,
    shell:
        "dmflow --kernels {params.kernels} learning-curve --fit-store {params.fit_store:q} --eval-store {params.eval_store:q}"
        " --fractions {params.fractions} --datamodels {input.datamodels:q} --fit {params.fit:q} --seed {params.seed}"
        " --threads {threads} --table {output.table:q} --figure {output.figure:q} 2> {log:q}"
