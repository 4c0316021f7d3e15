from cardigan.core.logs import stage_logging
from cardigan.phantom.write import write_phantom

with stage_logging(snakemake.log[0], "phantom", snakemake.threads):
    write_phantom(snakemake.output[0], threads=snakemake.threads, **snakemake.params.phantom)
