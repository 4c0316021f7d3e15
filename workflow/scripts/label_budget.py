from cardigan.core.logs import stage_logging
from cardigan.label_budget.stage import run_curve

with stage_logging(snakemake.log[0], "label_budget"):
    budgets = snakemake.params.budgets  # in the order of the inputs; the full split last
    run_curve(
        metrics=dict(zip(budgets, snakemake.input.metrics, strict=True)),
        patients_files=dict(zip(budgets[:-1], snakemake.input.patients, strict=True)),
        train_configs=dict(zip(budgets, snakemake.input.train_configs, strict=True)),
        full_budget=budgets[-1],
        data_dir=snakemake.params.data_dir,
        views=snakemake.params.views,
        outputs=dict(snakemake.output.items()),
    )
