rule phantom:
    output:
        directory(layout.PHANTOM_DIR),
    log:
        layout.stage_log("phantom"),
    benchmark:
        layout.benchmark("phantom")
    conda:
        "../../envs/cardigan.yaml"
    threads: 2
    params:
        phantom=config["phantom"],
        code=code("phantom"),
    script:
        "../scripts/phantom.py"
