"""Watching a training run: loss means per logging interval, sample grids, live views.

- :class:`LossLogger` accumulates the loss terms on the device (no sync per iteration), and
  every ``log_every`` iterations turns them into a log row (means over the interval and over the
  processes), a progress-bar postfix or a log line, and an images/s figure.
- :class:`SampleGrid` draws the fixed masks of every grid through the EMA generator.
- :class:`LiveView` (rank 0) shows the run while it goes: the loss table so far in the state
  folder (``train_log.csv``, rewritten from the checkpoint's rows on resume, then appended), and,
  when the optional ``tensorboard`` package is installed, TensorBoard scalars and sample grids
  under ``results/train/tensorboard/`` (not declared outputs: they hold timings).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cardigan.core.atomic import write_text_atomic
from cardigan.core.plots import label_rgb, save_grid
from cardigan.gan.layers import one_hot
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.styles import draw_styles, is_multimodal

log = logging.getLogger("cardigan")

GRID_MASKS = 6  # fixed masks in every sample grid
GRID_STYLES = 2  # fixed style codes per mask with the VAE
TENSORBOARD_DIR = "tensorboard"  # beside the outputs, deliberately not declared


def csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in columns])
    return buf.getvalue()


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class LossLogger:
    """Running means of the loss terms; log rows (deterministic) and images/s (a timing).

    ``rows`` and ``throughput_rows`` and the partial sums of the current interval are part of
    the checkpoint (``state_dict``), so a resumed run writes the same rows as one never stopped."""

    def __init__(self, columns: list[str], *, log_every: int, device: torch.device,
                 world: int, is_main: bool, epochs: int, batch_size: int):
        self.columns, self.log_every, self.world, self.is_main = columns, log_every, world, is_main
        self.epochs, self.batch_size, self.device = epochs, batch_size, device
        self.acc = torch.zeros(len(columns), dtype=torch.float64, device=device)
        self.count = 0
        self.rows: list[dict[str, Any]] = []
        self.throughput_rows: list[dict[str, Any]] = []
        self.bar = None
        self._t, self._step = time.perf_counter(), 0

    def state_dict(self) -> dict[str, Any]:
        acc = self.acc.clone()
        if self.world > 1:
            dist.all_reduce(acc)
        return {"log_rows": self.rows, "throughput_rows": self.throughput_rows,
                "log_acc": {"sum": acc, "count": self.count}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state["log_rows"]]
        self.throughput_rows = [dict(r) for r in state["throughput_rows"]]
        if self.is_main:  # the saved sum is over all processes: count it once
            self.acc = state["log_acc"]["sum"].to(device=self.device, dtype=torch.float64)
        self.count = int(state["log_acc"]["count"])

    def start(self, step: int, total: int, progress_bar: bool) -> None:
        self._t, self._step = time.perf_counter(), step
        if self.is_main and progress_bar and step < total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step, unit="it", dynamic_ncols=True)

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        self.acc += torch.stack([terms[c] for c in self.columns]).double()
        self.count += 1

    def after_step(self, step: int, total: int, epoch: int, lrs: tuple[float, float]
                   ) -> dict[str, Any] | None:
        """Call once per iteration (``step`` = iterations done); returns the new log row at the
        end of a logging interval (and of training), else None."""
        row = None
        if step % self.log_every == 0 or step == total:
            row = self._flush(step, total, epoch, lrs)
        if self.bar is not None:
            self.bar.update(1)
        return row

    def _flush(self, step: int, total: int, epoch: int, lrs: tuple[float, float]
               ) -> dict[str, Any]:
        acc = self.acc.clone()
        if self.world > 1:
            dist.all_reduce(acc)
        means = (acc / (self.count * self.world)).tolist()  # the one sync per interval
        self.acc.zero_()
        self.count = 0
        now = time.perf_counter()
        ips = (step - self._step) * self.batch_size / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        row = {"step": step, "epoch": epoch, **dict(zip(self.columns, means)),
               "lr_G": lrs[0], "lr_D": lrs[1]}
        self.rows.append(row)
        self.throughput_rows.append({"step": step, "images_per_s": ips})
        if self.is_main:
            summary = " ".join(f"{c} {row[c]:.3f}" for c in self.columns)
            if self.bar is not None:
                self.bar.set_postfix_str(f"{summary} | {ips:.1f} img/s", refresh=False)
            else:
                log.info("epoch %d/%d it %d/%d | %s | lr_G %.2e lr_D %.2e | %.1f img/s", epoch,
                         self.epochs, step, total, summary, lrs[0], lrs[1], ips)
        return row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SampleGrid:
    """Fixed masks (and, with a style input, fixed styles) drawn through the EMA generator: one
    PNG per epoch in the state folder's ``samples/`` (mid-run grids live there)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, masks_on_device: torch.Tensor, *,
                 model_cfg: ModelConfig, seed: int, samples_dir: Path):
        n = len(images)
        self.idx = np.unique(np.linspace(0, n - 1, min(GRID_MASKS, n)).round().astype(int))
        self.masks, self.images = masks[self.idx], images[self.idx]
        label_nc = model_cfg.label_nc
        device = masks_on_device.device
        self.seg = one_hot(masks_on_device[torch.from_numpy(self.idx).to(device)],
                           model_cfg.cond_nc, check=False)
        self.styles: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(None, None)]
        if is_multimodal(model_cfg):  # each style from its own seeded generator: RNG untouched
            seeds = np.arange(GRID_STYLES * len(self.idx)).reshape(GRID_STYLES, -1) + seed
            drawn = [draw_styles(model_cfg, row.tolist(), "prior", None) for row in seeds]
            self.styles = [tuple(None if t is None else t.to(device) for t in (s.z, s.noise))
                           for s in drawn]
        self.label_nc, self.image_size, self.dir = label_nc, model_cfg.image_size, samples_dir

    def path(self, epoch: int) -> Path:
        return self.dir / f"epoch_{epoch:04d}.png"

    @torch.no_grad()
    def save(self, ema: nn.Module, epoch: int, step: int) -> Path:
        fakes = [ema(self.seg, z, noise).float().cpu().numpy()[:, 0] for z, noise in self.styles]
        rows = [[label_rgb(self.masks[i], self.label_nc), self.images[i]] + [f[i] for f in fakes]
                for i in range(len(self.masks))]
        path = self.path(epoch)
        save_grid(path, rows, col_titles=["mask", "real"] + ["generated"] * len(fakes),
                  title=f"epoch {epoch} (iteration {step})",
                  scale=max(1.0, 96 / self.image_size))
        return path


class LiveView:
    """Rank 0's live view of a run: the loss table so far in the state folder, and TensorBoard
    scalars and grids when the ``tensorboard`` package is installed (``pip install
    'cardigan[tensorboard]'``); without it, only the table (said once in the log)."""

    def __init__(self, *, table: Path, columns: list[str], rows: list[dict[str, Any]],
                 tensorboard_dir: Path | None, start_step: int):
        self.table, self.columns = table, ["step", "epoch", *columns, "lr_G", "lr_D"]
        write_text_atomic(table, csv_text(self.columns, rows))  # the checkpoint's rows
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("no TensorBoard logs: the optional tensorboard package is not installed "
                         "(pip install 'cardigan[tensorboard]'); losses so far are in %s", table)
            else:
                # purge_step drops what a killed run logged after its last checkpoint
                self.writer = SummaryWriter(str(tensorboard_dir), purge_step=start_step or None)
                log.info("TensorBoard logs in %s (tensorboard --logdir %s)", tensorboard_dir,
                         tensorboard_dir)

    def row(self, row: dict[str, Any], images_per_s: float) -> None:
        with open(self.table, "a") as fh:
            fh.write(csv_text(self.columns, [row]).split("\n", 1)[1])
        if self.writer is not None:
            step = row["step"]
            for c in self.columns[2:-2]:
                group = "generator" if c.startswith("g_") else "discriminator"
                self.writer.add_scalar(f"loss/{group}/{c}", row[c], step)
            self.writer.add_scalar("lr/G", row["lr_G"], step)
            self.writer.add_scalar("lr/D", row["lr_D"], step)
            self.writer.add_scalar("speed/images_per_s", images_per_s, step)

    def grid(self, png: Path, step: int) -> None:
        if self.writer is not None:
            from PIL import Image

            with Image.open(png) as im:
                self.writer.add_image("samples", np.asarray(im.convert("RGB")), step,
                                      dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
