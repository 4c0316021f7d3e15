rule extract:
    input:
        camus_input(),
    output:
        images=extracted(SPLITS, anno=False),
        annos=extracted(SPLITS, images=False),
        metadata=layout.METADATA,
        previews=[layout.preview_file(s) for s in SPLITS],
    log:
        layout.stage_log("extract"),
    benchmark:
        layout.benchmark("extract")
    conda:
        "../../envs/cardigan.yaml"
    threads: 4
    params:
        data=config["data"],
        code=code("extract"),
        out_dir=lambda wildcards, output: str(Path(output.metadata).parent),
    script:
        "../scripts/extract.py"
