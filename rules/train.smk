rule train_chunk:
    input:
        data=L.data(),
        masks=L.masks("{alpha}", "{split}", "{chunk}"),
    output:
        L.trained("{alpha}", "{split}", "{chunk}"),
    log:
        L.log("train_chunk", "{alpha}", "{split}", "{chunk}"),
    conda:
        CONDA_ENV
    threads: config["train"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: config["train"]["mem_mb"] * attempt,
        gpu=gpus(config["train"]["device"]),
        runtime=train_runtime,
    params:
        usage=L.benchmark("train_chunk", "{alpha}", "{split}", "{chunk}"),
        model=section_json("model"),
        train=section_json("train"),
        replicates=lambda wc: replicates(wc.split),
        seed=SEED,
        kernels=KERNELS,
    shell:
        "dmflow --kernels {params.kernels} --usage {params.usage:q} train-chunk --data {input.data:q} --masks {input.masks:q} --alpha {wildcards.alpha}"
        " --split {wildcards.split} --chunk {wildcards.chunk} --seed {params.seed}"
        " --replicates {params.replicates} --model {params.model:q} --train {params.train:q}"
        " --threads {threads} --out {output:q} 2> {log:q}"
