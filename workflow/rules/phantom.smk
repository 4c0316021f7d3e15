rule phantom:
    output:
        directory(PHANTOM_DIR),
    log:
        "results/logs/phantom.log",
    benchmark:
        "results/benchmarks/phantom.tsv"
    threads: 2
    params:
        phantom=config["phantom"],
    script:
        "../scripts/phantom.py"
