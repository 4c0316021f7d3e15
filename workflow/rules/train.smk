# The training state (results/train/state/) is deliberately not a declared output: Snakemake
# deletes a failed job's outputs, and the checkpoint must survive a killed job to resume from.
rule train:
    input:
        images=extracted(["train"], anno=False),
        annos=extracted(["train"], images=False),
    output:
        generator="results/train/generator.pt",
        config="results/train/config.json",
        log_csv="results/train/train_log.csv",
        losses=report(
            "results/train/losses.png",
            caption="../report/losses.rst",
            category="1. Training",
        ),
        samples=report(
            directory("results/train/samples"),
            patterns=["{name}.png"],
            caption="../report/samples.rst",
            category="1. Training",
        ),
    log:
        "results/logs/train.log",
    benchmark:
        "results/benchmarks/train.tsv"
    conda:
        "../../envs/cardigan.yaml"
    threads: 8
    resources:
        gpu=uses_gpu("train"),
    params:
        train=config["train"],
        image_size=config["data"]["image_size"],
        state_dir="results/train/state",
    script:
        "../scripts/train.py"
