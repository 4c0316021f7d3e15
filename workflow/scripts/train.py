from pathlib import Path

from cardigan.core.logs import stage_logging
from cardigan.gan.launch import run_training
from cardigan.gan.train_config import TrainConfig

with stage_logging(snakemake.log[0], "train", snakemake.threads):
    run_training(
        images_h5=list(snakemake.input.images),
        annos_h5=list(snakemake.input.annos),
        out_dir=Path(snakemake.output.generator).parent,
        state_dir=snakemake.params.state_dir,
        cfg=TrainConfig.from_dict(dict(snakemake.params.train)),
        image_size=snakemake.params.image_size,
        threads=snakemake.threads,
    )
