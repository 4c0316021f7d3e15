rule phantom:
    output:
        directory(PHANTOM_DIR),
    log:
        "results/logs/phantom.log",
    benchmark:
        "results/benchmarks/phantom.tsv"
    conda:
        "../../envs/cardigan.yaml"
    threads: 2
    params:
        phantom=config["phantom"],
    script:
        "../scripts/phantom.py"
