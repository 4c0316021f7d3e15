from cardigan.core.logs import stage_logging
from cardigan.label_budget.subsets import write_budget_data

with stage_logging(snakemake.log[0], "label_budget_data") as log:
    chosen = write_budget_data(
        snakemake.params.data_dir,
        snakemake.params.out_dir,
        snakemake.params.views,
        int(snakemake.wildcards.budget),
        snakemake.params.seed,
    )
    log.info("label budget %s: patients %s", snakemake.wildcards.budget, ", ".join(chosen))
