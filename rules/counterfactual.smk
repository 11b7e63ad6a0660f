rule counterfactual_design:
    input:
        datamodels=L.datamodels("{alpha}"),
    output:
        masks=L.cf_masks("{alpha}"),
        cases=L.cf_cases("{alpha}"),
    log:
        L.log("counterfactual_design", "{alpha}"),
    conda:
        CONDA_ENV
    params:
        num_targets=config["counterfactual"]["num_targets"],
        ks=" ".join(str(k) for k in config["counterfactual"]["ks"]),
        seed=SEED,
    shell:
        "dmflow counterfactual-design --datamodels {input.datamodels:q}"
        " --alpha {wildcards.alpha} --num-targets {params.num_targets} --ks {params.ks} --seed {params.seed}"
        " --masks-out {output.masks:q} --cases-out {output.cases:q} 2> {log:q}"


rule counterfactual_analyse:
    input:
        cases=L.cf_cases("{alpha}"),
        trained=L.cf_trained("{alpha}"),
    output:
        changes=L.cf_changes("{alpha}"),
        flips=report(
            L.cf_flips("{alpha}"),
            caption="../report/flips.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
        brittleness=report(
            L.cf_brittleness("{alpha}"),
            caption="../report/brittleness_table.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
        summary=L.cf_summary("{alpha}"),
        figure=report(
            L.cf_figure("{alpha}"),
            caption="../report/counterfactual.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
        brittleness_figure=report(
            L.cf_brittleness_figure("{alpha}"),
            caption="../report/brittleness.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
    log:
        L.log("counterfactual_analyse", "{alpha}"),
    conda:
        CONDA_ENV
    shell:
        "dmflow counterfactual-analyse --cases {input.cases:q} --trained {input.trained:q}"
        " --changes {output.changes:q} --flips {output.flips:q} --brittleness {output.brittleness:q}"
        " --summary {output.summary:q} --figure {output.figure:q}"
        " --brittleness-figure {output.brittleness_figure:q} 2> {log:q}"
