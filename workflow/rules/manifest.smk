# The final rule: every declared output of the enabled stages with its sha256, and the hash of
# the effective config. It collects the rules' own outputs, so nothing is listed twice by hand.
rule manifest:
    input:
        phantom=rules.phantom.output if config["data"]["source"] == "phantom" else [],
        extract=rules.extract.output,
        train=rules.train.output,
        sample=rules.sample.output,
        export=rules.export.output,
        nnunet=(rules.nnunet.output if "nnunet" in config["export"]["formats"] else []),
        evaluate=rules.evaluate.output if config["evaluate"]["enabled"] else [],
        label_budget=(
            rules.label_budget.output
            + expand(layout.budget_patients_file("{budget}"), budget=BUDGETS)
            + expand(budget_train_outputs("{budget}")["generator"], budget=BUDGETS)
            + expand(layout.budget_samples("{budget}"), budget=BUDGETS)
            + expand(
                budget_evaluate_outputs("{budget}")["summary"],
                budget=BUDGETS,
            )
            if BUDGETS
            else []
        ),
    output:
        layout.MANIFEST,
    log:
        layout.stage_log("manifest"),
    # Hashing a few files: not worth a cluster job.
    localrule: True
    conda:
        "../../envs/cardigan.yaml"
    params:
        config_hash=config_hash(config),
        code=code("manifest"),
    script:
        "../scripts/manifest.py"
