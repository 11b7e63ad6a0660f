rule fit_block:
    input:
        manifest=f"{RESULTS}/store/{{alpha}}/fit/manifest.json",
        arrays=store_files("{alpha}", "fit"),
    output:
        f"{RESULTS}/fit/{{alpha}}/block{{block}}.npz",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/fit_block/{{alpha}}/block{{block}}.log",
    threads: config["fit"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: fit_mem_mb() * attempt,
    params:
        fit=section_json("fit"),
        targets_per_job=config["fit"]["targets_per_job"],
        seed=SEED,
    shell:
        "{DMFLOW} fit-block --store $(dirname {input.manifest:q}) --block {wildcards.block}"
        " --targets-per-job {params.targets_per_job} --fit {params.fit:q} --seed {params.seed}"
        " --threads {threads} --out {output:q} 2> {log:q}"


rule merge_fit:
    input:
        data=f"{RESULTS}/data.npz",
        blocks=expand(f"{RESULTS}/fit/{{{{alpha}}}}/block{{block}}.npz", block=block_ids()),
    output:
        f"{RESULTS}/datamodels/{{alpha}}.npz",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/merge_fit/{{alpha}}.log",
    shell:
        "{DMFLOW} merge-fit --data {input.data:q} --blocks {input.blocks:q} --out {output:q} 2> {log:q}"
