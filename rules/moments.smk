rule moments:
    input:
        manifest=L.manifest("{alpha}", "fit"),
        arrays=store_files("{alpha}", "fit"),
    output:
        manifest=L.moments_manifest("{alpha}"),
        arrays=moments_files("{alpha}"),
    log:
        L.log("moments", "{alpha}"),
    conda:
        CONDA_ENV
    threads: config["fit"]["threads"]
    resources:
        mem_mb=lambda wc, attempt: moments_mem_mb() * attempt,
    params:
        usage=L.benchmark("moments", "{alpha}"),
        store=lambda wc: L.store(wc.alpha, "fit"),
        folder=lambda wc: L.moments(wc.alpha),
        val_fraction=config["fit"]["val_fraction"],
        seed=SEED,
        kernels=KERNELS,
        device=config["fit"]["device"],
    shell:
        "dmflow --kernels {params.kernels} --usage {params.usage:q} moments --store {params.store:q} --val-fraction {params.val_fraction} --seed {params.seed}"
        " --threads {threads} --mem-mb {resources.mem_mb} --device {params.device} --out-dir {params.folder:q} 2> {log:q}"
