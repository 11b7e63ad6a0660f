rule prepare_data:
    output:
        f"{RESULTS}/data.npz",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/prepare_data.log",
    params:
        dataset=section_json("dataset"),
        seed=SEED,
    shell:
        "{DMFLOW} prepare-data --dataset {params.dataset:q} --seed {params.seed} --out {output:q} 2> {log:q}"
