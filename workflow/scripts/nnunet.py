from cardigan.logutil import stage_logging
from cardigan.nnunet import write_nnunet

nn = snakemake.params.nnunet
with stage_logging(snakemake.log[0], "nnunet", snakemake.threads) as log:
    write_nnunet(snakemake.input.h5, snakemake.output[0], nn["dataset_id"], nn["name"])
    log.info("nnU-Net raw dataset written to %s", snakemake.output[0])
