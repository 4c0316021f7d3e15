from pathlib import Path

from cardigan.core.logs import stage_logging
from cardigan.gan.train_config import TrainConfig
from cardigan.label_budget.training import run_budget_training

with stage_logging(snakemake.log[0], "label_budget_train", snakemake.threads):
    run_budget_training(
        images_h5=list(snakemake.input.images),
        annos_h5=list(snakemake.input.annos),
        full_images_h5=list(snakemake.input.full_images),
        out_dir=Path(snakemake.output.generator).parent,
        state_dir=snakemake.params.state_dir,
        cfg=TrainConfig.from_dict(dict(snakemake.params.train)),
        image_size=snakemake.params.image_size,
        threads=snakemake.threads,
    )
