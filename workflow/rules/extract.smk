rule extract:
    input:
        camus_input(),
    output:
        images=extracted(SPLITS, anno=False),
        annos=extracted(SPLITS, images=False),
        metadata=f"{DATA_DIR}/metadata.csv",
        previews=expand(f"{DATA_DIR}/preview_{{split}}.png", split=SPLITS),
    log:
        "results/logs/extract.log",
    benchmark:
        "results/benchmarks/extract.tsv"
    threads: 4
    params:
        data=config["data"],
        out_dir=DATA_DIR,
    script:
        "../scripts/extract.py"
