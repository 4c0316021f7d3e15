from pathlib import Path

from cardigan.logutil import stage_logging
from cardigan.train import TrainConfig, run_training

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
