rule export:
    input:
        samples=rules.sample.output.samples,
        generator=rules.train.output.generator,
        real_images=extracted(["train"], anno=False),
        real_annos=extracted(["train"], images=False),
    output:
        **{
            k: (directory(v) if k == "nnunet" else v)
            for k, v in export_outputs().items()
            if k not in ("preview",)
        },
        preview=report(
            export_outputs()["preview"],
            caption="../report/preview.rst",
            category="2. Synthetic dataset",
        ),
    log:
        layout.stage_log("export"),
    benchmark:
        layout.benchmark("export")
    conda:
        "../../envs/cardigan.yaml"
    threads: 2
    params:
        export=config["export"],
        provenance=provenance_config(),
        code=code("export"),
    script:
        "../scripts/export.py"
