rule make_masks:
    input:
        data=L.data(),
    output:
        L.masks("{alpha}", "{split}", "{chunk}"),
    log:
        L.log("make_masks", "{alpha}", "{split}", "{chunk}"),
    wildcard_constraints:
        split="fit|eval",
    conda:
        CONDA_ENV
    params:
        chunk_size=lambda wc: chunk_size(wc.split),
        seed=SEED,
    shell:
        "dmflow make-masks --data {input.data:q} --alpha {wildcards.alpha} --split {wildcards.split}"
        " --chunk {wildcards.chunk} --chunk-size {params.chunk_size} --seed {params.seed}"
        " --out {output:q} 2> {log:q}"
