rule train_chunk:
    input:
        data=f"{RESULTS}/data.npz",
        masks=f"{RESULTS}/masks/{{alpha}}/{{split}}/{{chunk}}.npy",
    output:
        f"{RESULTS}/train/{{alpha}}/{{split}}/{{chunk}}.npz",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/train_chunk/{{alpha}}/{{split}}/{{chunk}}.log",
    threads: config["train"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: config["train"]["mem_mb"] * attempt,
        gpu=1 if config["train"]["device"] == "cuda" else 0,
    params:
        model=section_json("model"),
        train=section_json("train"),
        replicates=lambda wc: replicates(wc.split),
        seed=SEED,
    shell:
        "{DMFLOW} train-chunk --data {input.data:q} --masks {input.masks:q} --alpha {wildcards.alpha}"
        " --split {wildcards.split} --chunk {wildcards.chunk} --seed {params.seed}"
        " --replicates {params.replicates} --model {params.model:q} --train {params.train:q}"
        " --threads {threads} --out {output:q} 2> {log:q}"
