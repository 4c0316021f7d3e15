"""A label budget's GAN: trained on the budget's patients only, for as many iterations as the full
train split's GAN.

A small subset is seen more often rather than for less time: at the default's fixed number of
epochs a 5-patient GAN would get an eighth of the updates, and the curve would measure training
time, not labels. The sample grids keep the full run's spacing in iterations too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from cardigan.data.frames import frame_ids
from cardigan.gan.launch import run_training
from cardigan.gan.state import Plan
from cardigan.gan.train_config import TrainConfig

log = logging.getLogger("cardigan")


def budget_config(cfg: TrainConfig, budget_frames: int, full_frames: int) -> TrainConfig:
    """``cfg`` with the epochs (and sample-grid spacing) that give a run on ``budget_frames``
    frames at least the iterations of ``cfg`` on ``full_frames``."""
    full = Plan(frames=full_frames, batch_size=cfg.batch_size, epochs=cfg.epochs)
    try:
        steps = Plan(frames=budget_frames, batch_size=cfg.batch_size, epochs=1).steps_per_epoch
    except ValueError as err:
        raise ValueError(f"label budget of {budget_frames} frames: {err}") from None
    epochs = math.ceil(full.total_steps / steps)
    every = max(1, round(cfg.sample_every * full.steps_per_epoch / steps))
    return cfg.replace(epochs=epochs, sample_every=every)


def run_budget_training(*, images_h5: Sequence[str | Path], annos_h5: Sequence[str | Path],
                        full_images_h5: Sequence[str | Path],
                        out_dir: str | Path, state_dir: str | Path, cfg: TrainConfig,
                        image_size: int, threads: int | None = None) -> TrainConfig:
    """Train a budget's GAN (:func:`run_training` with :func:`budget_config`); return the
    config it trained with."""
    # counted from the dataset names: the pixels are read once, by the training itself
    budget_frames = sum(len(frame_ids(p)) for p in images_h5)
    full_frames = sum(len(frame_ids(p)) for p in full_images_h5)
    scaled = budget_config(cfg, budget_frames, full_frames)
    log.info("label budget: %d of the train split's %d frames, %d epochs instead of %d (the full "
             "split's %d iterations)", budget_frames, full_frames, scaled.epochs, cfg.epochs,
             Plan(frames=full_frames, batch_size=cfg.batch_size, epochs=cfg.epochs).total_steps)
    run_training(images_h5=images_h5, annos_h5=annos_h5, out_dir=out_dir, state_dir=state_dir,
                 cfg=scaled, image_size=image_size, threads=threads)
    return scaled
