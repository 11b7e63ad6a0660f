rule counterfactual_design:
    input:
        datamodels=f"{RESULTS}/datamodels/{{alpha}}.npz",
        data=f"{RESULTS}/data.npz",
    output:
        masks=f"{RESULTS}/masks/{{alpha}}/counterfactual/00000.npy",
        cases=f"{RESULTS}/counterfactual/{{alpha}}/cases.csv",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/counterfactual_design/{{alpha}}.log",
    params:
        num_targets=config["counterfactual"]["num_targets"],
        ks=" ".join(str(k) for k in config["counterfactual"]["ks"]),
        seed=SEED,
    shell:
        "{DMFLOW} counterfactual-design --datamodels {input.datamodels:q} --data {input.data:q}"
        " --alpha {wildcards.alpha} --num-targets {params.num_targets} --ks {params.ks} --seed {params.seed}"
        " --masks-out {output.masks:q} --cases-out {output.cases:q} 2> {log:q}"


rule counterfactual_analyse:
    input:
        cases=f"{RESULTS}/counterfactual/{{alpha}}/cases.csv",
        trained=f"{RESULTS}/train/{{alpha}}/counterfactual/00000.npz",
    output:
        changes=f"{RESULTS}/counterfactual/{{alpha}}/changes.csv",
        flips=report(
            f"{RESULTS}/counterfactual/{{alpha}}/flips.csv",
            caption="../report/flips.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
        brittleness=report(
            f"{RESULTS}/counterfactual/{{alpha}}/brittleness.csv",
            caption="../report/brittleness_table.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
        summary=f"{RESULTS}/counterfactual/{{alpha}}/summary.json",
        figure=report(
            f"{RESULTS}/counterfactual/{{alpha}}/counterfactual.png",
            caption="../report/counterfactual.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
        brittleness_figure=report(
            f"{RESULTS}/counterfactual/{{alpha}}/brittleness.png",
            caption="../report/brittleness.rst",
            category="Counterfactuals",
            subcategory="alpha {alpha}",
        ),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/counterfactual_analyse/{{alpha}}.log",
    shell:
        "{DMFLOW} counterfactual-analyse --cases {input.cases:q} --trained {input.trained:q}"
        " --changes {output.changes:q} --flips {output.flips:q} --brittleness {output.brittleness:q}"
        " --summary {output.summary:q} --figure {output.figure:q}"
        " --brittleness-figure {output.brittleness_figure:q} 2> {log:q}"
