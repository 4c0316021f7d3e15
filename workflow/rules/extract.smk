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
    conda:
        "../../envs/cardigan.yaml"
    threads: 4
    params:
        data=config["data"],
        out_dir=lambda wildcards, output: str(Path(output.metadata).parent),
    script:
        "../scripts/extract.py"
