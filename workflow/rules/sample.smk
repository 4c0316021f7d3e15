rule sample:
    input:
        generator=rules.train.output.generator,
        annos=extracted(config["sample"]["mask_splits"], images=False),
        real_train_annos=extracted(["train"], images=False),
        user_masks=user_masks(),
    output:
        samples=layout.SAMPLES,
    log:
        layout.stage_log("sample"),
    benchmark:
        layout.benchmark("sample")
    conda:
        "../../envs/cardigan.yaml"
    threads: 4
    resources:
        gpu=uses_gpu("sample"),
    params:
        sample=config["sample"],
        code=code("sample"),
    script:
        "../scripts/sample.py"
