rule influencers:
    input:
        datamodels=f"{RESULTS}/datamodels/{{alpha}}.npz",
        data=f"{RESULTS}/data.npz",
    output:
        table=f"{RESULTS}/analysis/{{alpha}}/influencers.parquet",
        figure=report(
            f"{RESULTS}/analysis/{{alpha}}/influencers.png",
            caption="../report/influencers.rst",
            category="Influencers",
            subcategory="alpha {alpha}",
        ),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/influencers/{{alpha}}.log",
    params:
        a=config["analysis"],
        image_shape=image_shape_arg(),
    shell:
        "{DMFLOW} influencers --datamodels {input.datamodels:q} --data {input.data:q} {params.image_shape}"
        " --top-k {params.a[top_k]} --gallery-k {params.a[gallery_k]} --gallery-targets {params.a[gallery_targets]}"
        " --table {output.table:q} --figure {output.figure:q} 2> {log:q}"


rule leakage:
    input:
        datamodels=f"{RESULTS}/datamodels/{{alpha}}.npz",
        data=f"{RESULTS}/data.npz",
    output:
        table=report(
            f"{RESULTS}/analysis/{{alpha}}/leakage.csv",
            caption="../report/leakage_table.rst",
            category="Leakage",
            subcategory="alpha {alpha}",
        ),
        figure=report(
            f"{RESULTS}/analysis/{{alpha}}/leakage.png",
            caption="../report/leakage.rst",
            category="Leakage",
            subcategory="alpha {alpha}",
        ),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/leakage/{{alpha}}.log",
    params:
        pairs=config["analysis"]["leakage_pairs"],
        image_shape=image_shape_arg(),
    shell:
        "{DMFLOW} leakage --datamodels {input.datamodels:q} --data {input.data:q} {params.image_shape}"
        " --pairs {params.pairs} --table {output.table:q} --figure {output.figure:q} 2> {log:q}"


rule embeddings:
    input:
        datamodels=f"{RESULTS}/datamodels/{{alpha}}.npz",
        data=f"{RESULTS}/data.npz",
    output:
        table=f"{RESULTS}/analysis/{{alpha}}/embeddings.csv",
        ends=report(
            f"{RESULTS}/analysis/{{alpha}}/component_ends.csv",
            caption="../report/component_ends_table.rst",
            category="Embeddings",
            subcategory="alpha {alpha}",
        ),
        figure=report(
            f"{RESULTS}/analysis/{{alpha}}/embeddings.png",
            caption="../report/embeddings.rst",
            category="Embeddings",
            subcategory="alpha {alpha}",
        ),
        ends_figure=report(
            f"{RESULTS}/analysis/{{alpha}}/component_ends.png",
            caption="../report/component_ends.rst",
            category="Embeddings",
            subcategory="alpha {alpha}",
        ),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/embeddings/{{alpha}}.log",
    params:
        a=config["analysis"],
        seed=SEED,
        image_shape=image_shape_arg(),
    shell:
        "{DMFLOW} embeddings --datamodels {input.datamodels:q} --data {input.data:q} {params.image_shape}"
        " --components {params.a[components]} --clusters {params.a[clusters]} --ends {params.a[component_ends]}"
        " --seed {params.seed} --table {output.table:q} --ends-table {output.ends:q}"
        " --figure {output.figure:q} --ends-figure {output.ends_figure:q} 2> {log:q}"


rule summary:
    input:
        summary_inputs(),
    output:
        report(f"{RESULTS}/summary.md", caption="../report/summary.rst", category="Summary"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/summary.log",
    params:
        alphas=" ".join(ALPHAS),
    shell:
        "{DMFLOW} summary --results {RESULTS:q} --alphas {params.alphas} --out {output:q} 2> {log:q}"
