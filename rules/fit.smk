rule fit_block:
    input:
        store_manifest=L.manifest("{alpha}", "fit"),
        manifest=L.moments_manifest("{alpha}"),
        arrays=moments_files("{alpha}"),
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
        usage=L.benchmark("fit_block", "{alpha}", "block{block}"),
        moments=lambda wc: L.moments(wc.alpha),
        fit=section_json("fit"),
        targets_per_job=config["fit"]["targets_per_job"],
    shell:
        "dmflow --usage {params.usage:q} fit-block --moments {params.moments:q} --store-manifest {input.store_manifest:q}"
        " --block {wildcards.block} --targets-per-job {params.targets_per_job} --fit {params.fit:q}"
        " --threads {threads} --mem-mb {resources.mem_mb} --out {output:q} 2> {log:q}"


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
