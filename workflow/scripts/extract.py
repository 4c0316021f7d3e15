from cardigan.core.logs import stage_logging
from cardigan.data.extract import extract

data = snakemake.params.data
with stage_logging(snakemake.log[0], "extract", snakemake.threads) as log:
    summary = extract(
        snakemake.input[0],
        snakemake.params.out_dir,
        fmt=data["format"],
        views=data["views"],
        instants=data["instants"],
        image_size=data["image_size"],
        split=data["split"],
        threads=snakemake.threads,
    )
    log.info("extracted %d frames: %s", summary.frames, summary.patients)
