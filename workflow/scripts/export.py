from cardigan.core.logs import stage_logging
from cardigan.export.stage import run_export

with stage_logging(snakemake.log[0], "export", snakemake.threads) as log:
    counts = run_export(
        snakemake.input.samples,
        snakemake.input.generator,
        list(snakemake.input.real_images),
        list(snakemake.input.real_annos),
        snakemake.params.provenance,
        dict(snakemake.output.items()),
    )
    log.info("exported %d synthetic and %d real samples", counts["synthetic"], counts["real"])
