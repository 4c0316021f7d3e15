rule sample:
    input:
        generator="results/train/generator.pt",
        annos=extracted(config["sample"]["mask_splits"], images=False),
        real_train_annos=extracted(["train"], images=False),
    output:
        samples="results/sample/samples.h5",
    log:
        "results/logs/sample.log",
    benchmark:
        "results/benchmarks/sample.tsv"
    conda:
        "../../envs/cardigan.yaml"
    threads: 4
    resources:
        gpu=uses_gpu("sample"),
    params:
        sample=config["sample"],
    script:
        "../scripts/sample.py"
