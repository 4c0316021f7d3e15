from cardigan.export import run_export
from cardigan.logutil import stage_logging

with stage_logging(snakemake.log[0], "export", snakemake.threads) as log:
    counts = run_export(
        snakemake.input.samples,
        snakemake.input.generator,
        list(snakemake.input.real_images),
        list(snakemake.input.real_annos),
        snakemake.params.export,
        snakemake.params.provenance,
        dict(snakemake.output.items()),
        test_images=list(snakemake.input.test_images),
        test_annos=list(snakemake.input.test_annos),
    )
    log.info("exported %d synthetic and %d real samples", counts["synthetic"], counts["real"])
