rule sample:
    input:
        generator="results/train/generator.pt",
        images=extracted(config["sample"]["mask_splits"], anno=False),
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
        gpu=1 if config["sample"]["device"] != "cpu" else 0,
    params:
        sample=config["sample"],
    script:
        "../scripts/sample.py"
