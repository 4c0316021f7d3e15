# The label-budget curve (config section label_budget; off when label_budget.patients is empty).
# Per budget (wildcard budget: a patient count) a nested train subset, its own GAN and synthetic
# set, and U-Nets on every arm (evaluate.settings, which must hold them all); the full split is
# the default run's GAN, synthetic set and evaluation. Each budget's jobs cache on their own:
# adding a budget runs its jobs only.


rule budget_data:
    input:
        images=extracted(["train"], anno=False),
        annos=extracted(["train"], images=False),
        metadata=layout.METADATA,
    output:
        images=budget_extracted("{budget}", annos=False),
        annos=budget_extracted("{budget}", images=False),
        metadata=f"{layout.budget_data_dir('{budget}')}/metadata.csv",
        patients=layout.budget_patients_file("{budget}"),
    log:
        layout.stage_log("label_budget/{budget}/data"),
    wildcard_constraints:
        budget=r"\d+",
    conda:
        "../../envs/cardigan.yaml"
    params:
        seed=config["label_budget"]["seed"],
        views=VIEWS,
        data_dir=lambda wildcards, input: str(Path(input.metadata).parent),
        out_dir=lambda wildcards, output: str(Path(output.metadata).parent),
        code=code("label_budget_data"),
    script:
        "../scripts/label_budget_data.py"


# As rule train, the training state is not a declared output (it must survive a killed job).
rule budget_train:
    input:
        images=rules.budget_data.output.images,
        annos=rules.budget_data.output.annos,
        full_images=extracted(["train"], anno=False),
    output:
        generator=budget_train_outputs("{budget}")["generator"],
        config=budget_train_outputs("{budget}")["config"],
        log_csv=budget_train_outputs("{budget}")["log_csv"],
        losses=budget_train_outputs("{budget}")["losses"],
        samples=directory(budget_train_outputs("{budget}")["samples"]),
    log:
        layout.stage_log("label_budget/{budget}/train"),
    benchmark:
        layout.benchmark("label_budget/{budget}/train")
    wildcard_constraints:
        budget=r"\d+",
    conda:
        "../../envs/cardigan.yaml"
    threads: 8
    resources:
        gpu=uses_gpu("train"),
    params:
        train=config["train"],
        image_size=config["data"]["image_size"],
        state_dir=lambda wildcards: layout.train_state_dir(
            layout.budget_train_dir(wildcards.budget)
        ),
        code=code("label_budget_train"),
    script:
        "../scripts/label_budget_train.py"


# The budget's synthetic set: its own real and deformed masks only (not sample.mask_splits'
# other splits, nor sample.mask_path's user masks), plausibility ranges from its masks.
rule budget_sample:
    input:
        generator=rules.budget_train.output.generator,
        annos=rules.budget_data.output.annos,
        real_train_annos=rules.budget_data.output.annos,
    output:
        samples=layout.budget_samples("{budget}"),
    log:
        layout.stage_log("label_budget/{budget}/sample"),
    benchmark:
        layout.benchmark("label_budget/{budget}/sample")
    wildcard_constraints:
        budget=r"\d+",
    conda:
        "../../envs/cardigan.yaml"
    threads: 4
    resources:
        gpu=uses_gpu("sample"),
    params:
        sample={**config["sample"], "mask_path": None},
        code=code("sample"),
    script:
        "../scripts/sample.py"


rule budget_evaluate:
    input:
        synthetic=rules.budget_sample.output.samples,
        real_train=rules.budget_data.output.images + rules.budget_data.output.annos,
        real_test=extracted(["test"]),
    output:
        metrics=budget_evaluate_outputs("{budget}")["metrics"],
        dice=budget_evaluate_outputs("{budget}")["dice"],
        worst=budget_evaluate_outputs("{budget}")["worst"],
        summary=budget_evaluate_outputs("{budget}")["summary"],
    log:
        layout.stage_log("label_budget/{budget}/evaluate"),
    benchmark:
        layout.benchmark("label_budget/{budget}/evaluate")
    wildcard_constraints:
        budget=r"\d+",
    conda:
        "../../envs/cardigan.yaml"
    threads: 4
    resources:
        gpu=uses_gpu("evaluate"),
    params:
        evaluate=config["evaluate"],
        source=config["data"]["source"],
        views=config["data"]["views"],
        data_dir=lambda wildcards, input: str(Path(input.real_test[0]).parent),
        train_dir=lambda wildcards, input: str(Path(input.real_train[0]).parent),
        label_budget=False,
        code=code("evaluate"),
    script:
        "../scripts/evaluate.py"


rule label_budget:
    input:
        metrics=label_budget_metrics(),
        patients=expand(layout.budget_patients_file("{budget}"), budget=BUDGETS),
        train_configs=expand(
            budget_train_outputs("{budget}")["config"], budget=BUDGETS
        )
        + [rules.train.output.config],
        full_split=extracted(["train"], anno=False),
    output:
        curve_png=report(
            layout.label_budget_outputs()["curve_png"],
            caption="../report/label_budget.rst",
            category="4. Label budget",
        ),
        curve_csv=layout.label_budget_outputs()["curve_csv"],
        summary=report(
            layout.label_budget_outputs()["summary"],
            caption="../report/label_budget_summary.rst",
            category="4. Label budget",
        ),
    log:
        layout.stage_log("label_budget/curve"),
    conda:
        "../../envs/cardigan.yaml"
    params:
        budgets=BUDGETS + [layout.FULL_BUDGET],
        views=VIEWS,
        data_dir=lambda wildcards, input: str(Path(input.full_split[0]).parent),
        code=code("label_budget"),
    script:
        "../scripts/label_budget.py"
