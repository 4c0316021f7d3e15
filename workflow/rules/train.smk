# The training state (layout.TRAIN_STATE_DIR) is deliberately not a declared output: Snakemake
# deletes a failed job's outputs, and the checkpoint must survive a killed job to resume from.
rule train:
    input:
        images=extracted(["train"], anno=False),
        annos=extracted(["train"], images=False),
    output:
        generator=layout.train_outputs()["generator"],
        config=layout.train_outputs()["config"],
        log_csv=layout.train_outputs()["log_csv"],
        losses=report(
            layout.train_outputs()["losses"],
            caption="../report/losses.rst",
            category="1. Training",
        ),
        samples=report(
            directory(layout.train_outputs()["samples"]),
            patterns=["{name}.png"],
            caption="../report/samples.rst",
            category="1. Training",
        ),
    log:
        layout.stage_log("train"),
    benchmark:
        layout.benchmark("train")
    conda:
        "../../envs/cardigan.yaml"
    threads: 8
    resources:
        gpu=uses_gpu("train"),
    params:
        train=config["train"],
        image_size=config["data"]["image_size"],
        state_dir=layout.TRAIN_STATE_DIR,
        code=code("train"),
    script:
        "../scripts/train.py"
