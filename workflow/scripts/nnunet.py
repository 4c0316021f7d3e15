from cardigan.core.logs import stage_logging
from cardigan.export.nnunet import run_nnunet

with stage_logging(snakemake.log[0], "nnunet", snakemake.threads) as log:
    run_nnunet(
        snakemake.input.h5,
        snakemake.output.folder,
        snakemake.output.datalist,
        snakemake.params.nnunet,
        snakemake.input.test_images,
        snakemake.input.test_annos,
    )
    log.info("nnU-Net raw dataset written to %s", snakemake.output.folder)
