# The final rule: every declared output with its sha256, and the hash of the effective config.
rule manifest:
    input:
        stage_targets(),
    output:
        "results/manifest.tsv",
    log:
        "results/logs/manifest.log",
    # Hashing a few files: not worth a cluster job.
    localrule: True
    conda:
        "../../envs/cardigan.yaml"
    params:
        config_hash=config_hash(config),
    script:
        "../scripts/manifest.py"
