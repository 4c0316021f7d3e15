rule evaluate:
    input:
        synthetic=rules.export.output.h5,
        real_train=extracted(["train"]),
        real_test=extracted(["test"]),
    output:
        metrics=report(
            evaluate_outputs()["metrics"],
            caption="../report/metrics.rst",
            category="3. Evaluation",
        ),
        dice=report(
            evaluate_outputs()["dice"],
            caption="../report/dice.rst",
            category="3. Evaluation",
        ),
        worst=report(
            evaluate_outputs()["worst"],
            caption="../report/worst.rst",
            category="3. Evaluation",
        ),
        summary=report(
            evaluate_outputs()["summary"],
            caption="../report/summary.rst",
            category="3. Evaluation",
        ),
    log:
        layout.stage_log("evaluate"),
    benchmark:
        layout.benchmark("evaluate")
    conda:
        "../../envs/cardigan.yaml"
    threads: 4
    resources:
        gpu=uses_gpu("evaluate"),
    params:
        evaluate=config["evaluate"],
        source=config["data"]["source"],
        views=config["data"]["views"],
        code=code("evaluate"),
        data_dir=lambda wildcards, input: str(Path(input.real_test[0]).parent),
        train_dir=lambda wildcards, input: str(Path(input.real_train[0]).parent),
        # summary.md links the label-budget curve when there is one
        label_budget=bool(BUDGETS),
    script:
        "../scripts/evaluate.py"
