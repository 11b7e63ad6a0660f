rule influencers:
    input:
        datamodels=L.datamodels("{alpha}"),
        data=L.data(),
    output:
        table=L.influencers_table("{alpha}"),
        figure=report(
            L.influencers_figure("{alpha}"),
            caption="../report/influencers.rst",
            category="Influencers",
            subcategory="alpha {alpha}",
        ),
    log:
        L.log("influencers", "{alpha}"),
    conda:
        CONDA_ENV
    params:
        a=config["analysis"],
        image_shape=image_shape_arg(),
    shell:
        "dmflow influencers --datamodels {input.datamodels:q} --data {input.data:q} {params.image_shape}"
        " --top-k {params.a[top_k]} --gallery-k {params.a[gallery_k]} --gallery-targets {params.a[gallery_targets]}"
        " --table {output.table:q} --figure {output.figure:q} 2> {log:q}"


rule leakage:
    input:
        datamodels=L.datamodels("{alpha}"),
        data=L.data(),
    output:
        table=report(
            L.leakage_table("{alpha}"),
            caption="../report/leakage_table.rst",
            category="Leakage",
            subcategory="alpha {alpha}",
        ),
        figure=report(
            L.leakage_figure("{alpha}"),
            caption="../report/leakage.rst",
            category="Leakage",
            subcategory="alpha {alpha}",
        ),
    log:
        L.log("leakage", "{alpha}"),
    conda:
        CONDA_ENV
    params:
        pairs=config["analysis"]["leakage_pairs"],
        image_shape=image_shape_arg(),
    shell:
        "dmflow leakage --datamodels {input.datamodels:q} --data {input.data:q} {params.image_shape}"
        " --pairs {params.pairs} --table {output.table:q} --figure {output.figure:q} 2> {log:q}"


rule embeddings:
    input:
        datamodels=L.datamodels("{alpha}"),
        data=L.data(),
    output:
        table=L.embeddings_table("{alpha}"),
        ends=report(
            L.ends_table("{alpha}"),
            caption="../report/component_ends_table.rst",
            category="Embeddings",
            subcategory="alpha {alpha}",
        ),
        figure=report(
            L.embeddings_figure("{alpha}"),
            caption="../report/embeddings.rst",
            category="Embeddings",
            subcategory="alpha {alpha}",
        ),
        ends_figure=report(
            L.ends_figure("{alpha}"),
            caption="../report/component_ends.rst",
            category="Embeddings",
            subcategory="alpha {alpha}",
        ),
    log:
        L.log("embeddings", "{alpha}"),
    conda:
        CONDA_ENV
    params:
        a=config["analysis"],
        seed=SEED,
        image_shape=image_shape_arg(),
    shell:
        "dmflow embeddings --datamodels {input.datamodels:q} --data {input.data:q} {params.image_shape}"
        " --components {params.a[components]} --clusters {params.a[clusters]} --ends {params.a[component_ends]}"
        " --seed {params.seed} --table {output.table:q} --ends-table {output.ends:q}"
        " --figure {output.figure:q} --ends-figure {output.ends_figure:q} 2> {log:q}"


rule summary:
    input:
        summary_inputs(),
    output:
        report(L.summary(), caption="../report/summary.rst", category="Summary"),
    log:
        L.log("summary"),
    conda:
        CONDA_ENV
    params:
        results=lambda wc, output: os.path.dirname(output[0]),
        alphas=" ".join(ALPHAS),
        mem_mb=lambda wc: benchmarked_mem_mb(),
    shell:
        "dmflow summary --results {params.results:q} --alphas {params.alphas} --mem-mb {params.mem_mb}"
        " --out {output:q} 2> {log:q}"
