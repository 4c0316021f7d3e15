from cardigan.core.logs import stage_logging
from cardigan.synth.sample import run_sample

with stage_logging(snakemake.log[0], "sample", snakemake.threads):
    run_sample(
        snakemake.input.generator,
        list(snakemake.input.annos),
        list(snakemake.input.real_train_annos),
        snakemake.params.sample,
        snakemake.output.samples,
        threads=snakemake.threads,
    )
