rule prepare_data:
    output:
        L.data(),
    log:
        L.log("prepare_data"),
    conda:
        CONDA_ENV
    params:
        dataset=section_json("dataset"),
        seed=SEED,
    shell:
        "dmflow prepare-data --dataset {params.dataset:q} --seed {params.seed} --out {output:q} 2> {log:q}"
