"""The train rule's declared outputs, written from a finished training state: generator.pt,
config.json, train_log.csv, losses.png and samples/ (and throughput.csv beside them, not declared:
it is a timing)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cardigan.core import layout
from cardigan.core.atomic import atomic_dir, write_text_atomic
from cardigan.core.plots import plot_losses
from cardigan.core.version import __version__
from cardigan.data.plausibility import plausibility_record
from cardigan.gan.appearance import Appearance
from cardigan.gan.background import BackgroundBank
from cardigan.gan.generator_file import save_generator
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.styles import BANK_KEY, StyleBank
from cardigan.gan.train_config import TrainConfig
from cardigan.gan.train_log import csv_text

#: Declared outputs of the train rule, by rule output name, relative to ``out_dir``.
OUTPUTS = {name: Path(path).name for name, path in layout.train_outputs().items()}
THROUGHPUT_NAME = "throughput.csv"  # timings: beside the outputs, deliberately not declared


def _replace_dir(src: Path, dst: Path) -> None:
    """Copy folder ``src`` to ``dst`` through a temporary sibling, then swap it in."""
    with atomic_dir(dst) as tmp:
        if src.is_dir():
            for f in sorted(src.iterdir()):
                shutil.copy2(f, tmp / f.name)


@dataclass(frozen=True)
class TrainOutputs:
    """Where a run's declared outputs go, and what every one of them records about the run."""

    out_dir: Path
    cfg: TrainConfig
    model_cfg: ModelConfig
    fingerprint: str
    data_sha256: str
    images_h5: tuple[str, ...]
    annos_h5: tuple[str, ...]
    frames: int
    columns: tuple[str, ...]  # the loss terms, in train_log.csv order

    def path(self, name: str) -> Path:
        return self.out_dir / OUTPUTS[name]

    def write_generator(self, ema: nn.Module, step: int, style_bank: StyleBank | None,
                        appearance: Appearance, background: BackgroundBank | None = None
                        ) -> None:
        """generator.pt: the EMA weights, and what sampling needs without the training data (the
        plausibility ranges of the train masks, the style bank, grey levels and speckle, the
        background's pseudo-classes)."""
        extra = {"train": self.cfg.to_dict(), "image_size": self.model_cfg.image_size,
                 "step": step, "epochs": self.cfg.epochs, "fingerprint": self.fingerprint,
                 "data_sha256": self.data_sha256, "ema": True,
                 "plausibility": plausibility_record(self.annos_h5)}
        if style_bank is not None:
            extra[BANK_KEY] = style_bank.to_extra()
        extra.update(appearance.to_extra())
        if background is not None:
            extra.update(background.to_extra())
        save_generator(self.path("generator"), ema, self.model_cfg, extra=extra)

    def write_config(self, resolved: dict[str, Any]) -> None:
        """config.json: the effective settings, what they resolved to on this machine, the data."""
        effective = {
            "train": self.cfg.to_dict(), "image_size": self.model_cfg.image_size,
            "model_config": self.model_cfg.to_dict(), "resolved": resolved,
            "fingerprint": self.fingerprint,
            "data": {"frames": self.frames, "sha256": self.data_sha256,
                     "images_h5": [str(p) for p in self.images_h5],
                     "annos_h5": [str(p) for p in self.annos_h5]},
            "log_columns": self.log_columns,
            "versions": {"cardigan": __version__, "torch": torch.__version__.split("+")[0]},
        }
        write_text_atomic(self.path("config"), json.dumps(effective, indent=2) + "\n")

    @property
    def log_columns(self) -> list[str]:
        return ["step", "epoch", *self.columns, "lr_G", "lr_D"]

    def write_logs(self, log_rows: list[dict], throughput_rows: list[dict], step: int) -> None:
        """train_log.csv and losses.png from the state's log rows; throughput.csv beside them."""
        write_text_atomic(self.path("log_csv"), csv_text(self.log_columns, log_rows))
        write_text_atomic(self.out_dir / THROUGHPUT_NAME,
                          csv_text(["step", "images_per_s"], throughput_rows))
        columns = list(self.columns)
        steps = np.array([r["step"] for r in log_rows])
        data = {c: np.array([r[c] for r in log_rows]) for c in columns}
        plot_losses(self.path("losses"), steps, data,
                    groups={"generator (total)": ["g_total"],
                            "generator terms": [c for c in columns
                                                if c.startswith("g_") and c != "g_total"],
                            "discriminator (hinge)": ["d_real", "d_fake", "d_total"]},
                    title=f"SPADE training losses ({self.cfg.epochs} epochs, {step} iterations)")

    def write_samples(self, samples_dir: Path) -> None:
        """samples/: the state folder's sample grids, one per sampled epoch."""
        _replace_dir(samples_dir, self.path("samples"))
