rule fit_block:
    input:
        manifest=L.manifest("{alpha}", "fit"),
        arrays=store_files("{alpha}", "fit"),
    output:
        L.fit_block("{alpha}", "{block}"),
    log:
        L.log("fit_block", "{alpha}", "block{block}"),
    conda:
        CONDA_ENV
    threads: config["fit"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: fit_mem_mb() * attempt,
    params:
        store=lambda wc: L.store(wc.alpha, "fit"),
        fit=section_json("fit"),
        targets_per_job=config["fit"]["targets_per_job"],
        seed=SEED,
    shell:
        "dmflow fit-block --store {params.store:q} --block {wildcards.block}"
        " --targets-per-job {params.targets_per_job} --fit {params.fit:q} --seed {params.seed}"
        " --threads {threads} --out {output:q} 2> {log:q}"


rule merge_fit:
    input:
        data=L.data(),
        blocks=[L.fit_block("{alpha}", b) for b in block_ids(NUM_TARGETS, config["fit"]["targets_per_job"])],
    output:
        L.datamodels("{alpha}"),
    log:
        L.log("merge_fit", "{alpha}"),
    conda:
        CONDA_ENV
    shell:
        "dmflow merge-fit --data {input.data:q} --blocks {input.blocks:q} --out {output:q} 2> {log:q}"
