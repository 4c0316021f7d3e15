# The final rule: every declared output with its sha256, and the hash of the effective config.
rule manifest:
    input:
        stage_targets(),
    output:
        "results/manifest.tsv",
    log:
        "results/logs/manifest.log",
    params:
        config_hash=config_hash(config),
    script:
        "../scripts/manifest.py"
