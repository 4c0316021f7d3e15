from cardigan.core.logs import stage_logging
from cardigan.export.manifest import write_manifest

with stage_logging(snakemake.log[0], "manifest") as log:
    n = write_manifest(snakemake.input, snakemake.params.config_hash, snakemake.output[0])
    log.info("manifest lists %d files", n)
