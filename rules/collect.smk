rule collect:
    input:
        data=f"{RESULTS}/data.npz",
        masks=lambda wc: chunk_files("masks", wc),
        trained=lambda wc: chunk_files("train", wc),
    output:
        manifest=f"{RESULTS}/store/{{alpha}}/{{split}}/manifest.json",
        arrays=store_files("{alpha}", "{split}"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/collect/{{alpha}}/{{split}}.log",
    params:
        chunk_size=lambda wc: chunk_size(wc.split),
        replicates=lambda wc: replicates(wc.split),
        seed=SEED,
        max_diverged=config["train"]["max_diverged_fraction"],
    shell:
        "{DMFLOW} collect --data {input.data:q} --alpha {wildcards.alpha} --split {wildcards.split}"
        " --seed {params.seed} --replicates {params.replicates} --chunk-size {params.chunk_size}"
        " --masks {input.masks:q} --trained {input.trained:q}"
        " --max-diverged-fraction {params.max_diverged} --out-dir $(dirname {output.manifest:q}) 2> {log:q}"
