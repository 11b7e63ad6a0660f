rule collect:
    input:
        data=L.data(),
        masks=lambda wc: chunk_files("masks", wc),
        trained=lambda wc: chunk_files("train", wc),
    output:
        manifest=L.manifest("{alpha}", "{split}"),
        arrays=store_files("{alpha}", "{split}"),
    log:
        L.log("collect", "{alpha}", "{split}"),
    conda:
        CONDA_ENV
    params:
        store=lambda wc: L.store(wc.alpha, wc.split),
        chunk_size=lambda wc: chunk_size(wc.split),
        replicates=lambda wc: replicates(wc.split),
        seed=SEED,
        max_diverged=config["train"]["max_diverged_fraction"],
    shell:
        "dmflow collect --data {input.data:q} --alpha {wildcards.alpha} --split {wildcards.split}"
        " --seed {params.seed} --replicates {params.replicates} --chunk-size {params.chunk_size}"
        " --masks {input.masks:q} --trained {input.trained:q}"
        " --max-diverged-fraction {params.max_diverged} --out-dir {params.store:q} 2> {log:q}"
