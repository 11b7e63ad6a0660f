rule make_masks:
    input:
        data=f"{RESULTS}/data.npz",
    output:
        f"{RESULTS}/masks/{{alpha}}/{{split}}/{{chunk}}.npy",
    wildcard_constraints:
        split="fit|eval",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/make_masks/{{alpha}}/{{split}}/{{chunk}}.log",
    params:
        chunk_size=lambda wc: chunk_size(wc.split),
        seed=SEED,
    shell:
        "{DMFLOW} make-masks --data {input.data:q} --alpha {wildcards.alpha} --split {wildcards.split}"
        " --chunk {wildcards.chunk} --chunk-size {params.chunk_size} --seed {params.seed}"
        " --out {output:q} 2> {log:q}"
