from cardigan.logutil import stage_logging
from cardigan.nnunet import write_datalist, write_nnunet

nn = snakemake.params.nnunet
with stage_logging(snakemake.log[0], "nnunet", snakemake.threads) as log:
    test = list(zip(snakemake.input.test_images, snakemake.input.test_annos))
    write_nnunet(
        snakemake.input.h5,
        snakemake.output.folder,
        nn["dataset_id"],
        nn["name"],
        n_folds=nn["folds"],
        test_pairs=test if nn["test_split"] else (),
    )
    write_datalist(snakemake.output.folder, snakemake.output.datalist)
    log.info("nnU-Net raw dataset written to %s", snakemake.output.folder)
