from cardigan.core.logs import stage_logging
from cardigan.evaluate import run_evaluate

# the segmenter runs start worker processes (spawn), which import this file again
if __name__ == "__main__":
    with stage_logging(snakemake.log[0], "evaluate", snakemake.threads) as log:
        run_evaluate(
            synthetic_h5=snakemake.input.synthetic,
            data_dir=snakemake.params.data_dir,
            views=snakemake.params.views,
            cfg=snakemake.params.evaluate,
            source=snakemake.params.source,
            metrics_csv=snakemake.output.metrics,
            dice_png=snakemake.output.dice,
            summary_md=snakemake.output.summary,
            worst_png=snakemake.output.worst,
            threads=snakemake.threads,
            train_dir=snakemake.params.train_dir,
            label_budget=snakemake.params.label_budget,
        )
        log.info("evaluate: wrote %s", ", ".join(snakemake.output))
