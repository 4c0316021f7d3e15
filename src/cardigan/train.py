"""The SPADE training loop: mask -> image on the extracted train split, resumable exactly.

One function, :func:`train`, does the whole stage (in the spirit of EDM's ``training_loop``): load
the frames into memory, build the networks (:mod:`cardigan.model`), and alternate a generator and
a discriminator update (:func:`train_step`, :mod:`cardigan.losses`, as in NVlabs/SPADE) for
``epochs`` passes over the data, keeping an exponential moving average (EMA) of the generator's
weights for sampling. Where things live:

- :mod:`cardigan.train_state`: ``TrainingState`` (networks, EMA, optimisers, lr schedules,
  iteration, loss log; ``state_dict``/``load_state_dict`` = the checkpoint's keys), ``Plan`` (the
  run's arithmetic), ``Batches``, ``select_state`` (which saved state to continue);
- :mod:`cardigan.train_log`: ``LossLogger`` (running means, progress bar, log lines),
  ``SampleGrid``, ``LiveView`` (the loss table in the state folder as training goes,
  TensorBoard when installed);
- here: the config, :func:`train_step`, the loop (``_train``), the declared outputs, launching.

Choices worth knowing:

- **Exact resume.** Everything that determines the next iteration is in one checkpoint
  (:mod:`cardigan.checkpoint`): weights, optimiser and lr-schedule states, the iteration count (the
  epoch and the batch within it follow from it, the epoch's order is regenerated from
  ``(seed, epoch)``), the RNG states of every process (each its own CUDA device's only, so a
  state resumes with fewer GPUs visible), and the partial loss averages of the current logging
  interval. On the CPU a run killed after k iterations and started again ends with the
  same weights, log rows and sample grids, bit for bit, as one that was never interrupted.
- **Stale weights are never reused.** A state is valid for a *fingerprint*: the hash of the model
  config, every training setting that changes the weights (not ``epochs``, not the
  logging/checkpoint/sample frequencies, not the device, ``gpus``, ``amp``, ``channels_last`` or
  ``compile``), the training data itself, and the model code (:mod:`cardigan.model` and what it
  imports). States live in ``state_dir/<fingerprint[:16]>/``;
  a changed setting starts a new folder and leaves the old one alone. More ``epochs`` continue the
  matching state with the lr schedule of the new total; fewer epochs than the state already has
  move that state aside (``<fingerprint[:16]>.superseded-it<N>``) and train again from the start.
- **Declared outputs are rebuilt from the state** at the end (log rows live in the checkpoint,
  sample grids in the state folder), so a killed job that Snakemake cleaned up loses nothing, and
  every declared output is byte-identical on the CPU for the same config. Throughput (images/s)
  is a timing and differs between runs: it goes to the log and to ``throughput.csv`` beside the
  outputs (not declared), not to ``train_log.csv``.
- **Batches.** ``batch_size`` is the global batch; with DDP each of the ``gpus`` processes takes
  its slice of every batch, so the sequence of batches does not depend on the number of GPUs.
  The last incomplete batch of an epoch is dropped.
- **lr.** Adam with the two time-scale rule; constant for the first ``epochs // 2`` epochs, then
  linear decay per iteration to zero at the end.
- **EMA** with the usual warm-up, decay ``min(ema_decay, (1 + t) / (10 + t))`` at update t, so a
  short run's average is not dominated by the random initial weights.
- The discriminator update reuses the generator update's (detached) fake batch instead of running
  the generator a second time (pix2pixHD's order; the reference regenerates it): one generator
  forward per iteration instead of two.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from . import __version__, layout
from .atomic import atomic_dir, write_text_atomic
from .checkpoint import (
    STATE_NAME,
    capture_rng,
    fingerprint_dir,
    restore_rng,
    save_state,
)
from .code_fingerprint import code_fingerprint
from .config import config_hash
from .dataio import iter_frames, mask_key
from .defaults import default
from .device import bf16_autocast_enabled
from .device import resolve_device as _resolve_device
from .losses import VGGPerceptualLoss, discriminator_losses, generator_losses
from .model import ModelConfig, save_generator
from .appearance import Appearance
from .styles import BANK_KEY, StyleBank, encode_bank
from .plots import plot_losses
from .train_log import TENSORBOARD_DIR, LiveView, LossLogger, SampleGrid, csv_text
from .train_state import (  # noqa: F401  (lr_factor ... one_hot_unchecked: re-exported)
    Batches,
    Plan,
    TrainingState,
    ema_decay_at,
    ema_update,
    epoch_order,
    lr_factor,
    one_hot_unchecked,
    select_state,
)
from .sample import plausibility_record

log = logging.getLogger("cardigan")

#: Declared outputs of the train rule, by rule output name, relative to ``out_dir``.
OUTPUTS = {name: Path(path).name for name, path in layout.train_outputs().items()}
#: Bumped when the same settings would train other weights (2: fused SPADE layout, KL per
#: sample), so that states of the earlier code are left alone instead of resumed.
TRAINER_VERSION = 2
THROUGHPUT_NAME = "throughput.csv"  # timings: beside the outputs, deliberately not declared
#: Settings that do not change the trained weights (or, for epochs, only how far training goes):
#: left out of the state fingerprint so that changing them resumes instead of retraining.
NOT_FINGERPRINTED = ("epochs", "log_every", "checkpoint_every", "sample_every", "device", "gpus",
                     "amp", "channels_last", "compile")


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of the config; field defaults are the schema's."""

    device: str = default("train", "device")
    gpus: int = default("train", "gpus")
    seed: int = default("train", "seed")
    epochs: int = default("train", "epochs")
    batch_size: int = default("train", "batch_size")
    ngf: int = default("train", "ngf")
    ndf: int = default("train", "ndf")
    num_upsampling_layers: str = default("train", "num_upsampling_layers")
    norm_G: str = default("train", "norm_G")
    norm_D: str = default("train", "norm_D")
    spade_hidden: int = default("train", "spade_hidden")
    num_D: int = default("train", "num_D")
    n_layers_D: int = default("train", "n_layers_D")
    label_nc: int = default("train", "label_nc")
    use_vae: bool = default("train", "use_vae")
    z_dim: int = default("train", "z_dim")
    noise_dim: int = default("train", "noise_dim")
    texture_noise: bool = default("train", "texture_noise")
    lr_G: float = default("train", "lr_G")
    lr_D: float = default("train", "lr_D")
    beta1: float = default("train", "beta1")
    beta2: float = default("train", "beta2")
    lambda_feat: float = default("train", "lambda_feat")
    lambda_kld: float = default("train", "lambda_kld")
    lambda_vgg: float = default("train", "lambda_vgg")
    lambda_l1: float = default("train", "lambda_l1")
    perceptual_weights: str | None = default("train", "perceptual_weights")
    ema_decay: float = default("train", "ema_decay")
    amp: bool = default("train", "amp")
    channels_last: bool = default("train", "channels_last")
    compile: bool = default("train", "compile")
    log_every: int = default("train", "log_every")
    checkpoint_every: int = default("train", "checkpoint_every")
    sample_every: int = default("train", "sample_every")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From ``config['train']``; unknown keys raise ValueError naming them."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(types))
        if unknown:
            names = ", ".join("train." + k for k in unknown)
            raise ValueError(f"unknown train setting(s): {names}")
        # YAML writes 1e-4 as a float but 1 as an int: normalise so the fingerprint does not care.
        return cls(**{k: float(v) if types[k] == "float" else v for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self, image_size: int) -> ModelConfig:
        return ModelConfig.from_train_config(self.to_dict(), image_size)


@dataclass
class TrainResult:
    """What :func:`train` returns: where training stopped and the (unwrapped) networks."""

    step: int
    total_steps: int
    fingerprint: str
    state_path: Path
    generator: nn.Module
    discriminator: nn.Module
    encoder: nn.Module | None
    ema: nn.Module


# --------------------------------------------------------------------------------------------
# Pieces of the loop (small, pure, tested on their own)
# --------------------------------------------------------------------------------------------
def load_training_data(
    images_h5: Sequence[str | Path], annos_h5: Sequence[str | Path], *, image_size: int,
    label_nc: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and masks of the train split, checked before any training.

    Raises ValueError naming the file, dataset key and value for a frame of the wrong size or a
    mask value >= ``label_nc`` (the reference failed later with an opaque scatter error).
    """
    if len(images_h5) != len(annos_h5) or not images_h5:
        raise ValueError(f"train needs matching image/annotation files, got {list(images_h5)} "
                         f"and {list(annos_h5)}")
    images, masks = [], []
    for img_path, ann_path in zip(images_h5, annos_h5):
        for f in iter_frames(img_path, ann_path):
            key = mask_key(f.patient, f.view, f.instant)
            if f.image.shape != (image_size, image_size):
                raise ValueError(
                    f"{img_path}: frame {f.patient} {f.view} {f.instant} is {f.image.shape[0]}x"
                    f"{f.image.shape[1]} but data.image_size is {image_size}: re-run extract"
                )
            if f.image.dtype != np.uint8 or f.mask.dtype != np.uint8:
                raise ValueError(f"{img_path}/{ann_path}: {key} is not uint8 "
                                 f"({f.image.dtype}, {f.mask.dtype})")
            top = int(f.mask.max())
            if top >= label_nc:
                raise ValueError(
                    f"{ann_path}: mask {key} ({f.patient} {f.view} {f.instant}) has label value "
                    f"{top} >= train.label_nc={label_nc}; labels must be 0..{label_nc - 1} "
                    f"(raise train.label_nc or fix the masks)"
                )
            images.append(f.image)
            masks.append(f.mask)
    if not images:
        raise ValueError(f"no frames in {list(images_h5)}")
    return np.stack(images), np.stack(masks)


def training_frame_ids(images_h5: Sequence[str | Path], annos_h5: Sequence[str | Path]
                       ) -> list[str]:
    """``patient_view_instant`` of every training frame, in :func:`load_training_data` order."""
    return [f"{f.patient}_{f.view}_{f.instant}"
            for img, ann in zip(images_h5, annos_h5) for f in iter_frames(img, ann)]


def data_sha256(images: np.ndarray, masks: np.ndarray) -> str:
    """Content hash of the training data, in training order (part of the state fingerprint)."""
    h = hashlib.sha256()
    for a in (images, masks):
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fingerprinted_settings(cfg: TrainConfig, image_size: int, data_hash: str) -> dict[str, Any]:
    """Everything that determines the trained weights, apart from the number of epochs."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in NOT_FINGERPRINTED}
    if not cfg.use_vae:
        settings.pop("lambda_kld")  # unused: changing it must not throw a state away
    if not cfg.perceptual_weights:
        settings.pop("lambda_vgg")
    if not cfg.lambda_l1:
        settings.pop("lambda_l1")  # off: the fingerprint of states trained before it existed
    # The model code too: weights trained by other network code are never resumed.
    return {"model": cfg.model_config(image_size).to_dict(), "train": settings, "data": data_hash,
            "trainer": TRAINER_VERSION, "model_code": code_fingerprint("cardigan.model")}


def train_step(
    *, G: nn.Module, D: nn.Module, D_frozen: nn.Module, E: nn.Module | None,
    vgg: nn.Module | None, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer,
    seg: torch.Tensor, real: torch.Tensor, cfg: TrainConfig, autocast: Callable[[], Any],
) -> dict[str, torch.Tensor]:
    """One iteration: a generator (and encoder) update, then a discriminator update.

    ``G``/``D``/``E`` may be DDP/compiled wrappers; ``D_frozen`` is the plain discriminator that
    the generator loss runs through with its weights frozen (no DDP gradient sync for D there).
    Returns the detached loss terms.
    """
    D_frozen.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with autocast():
        g_total, g_terms, fake = generator_losses(
            G, D_frozen, seg, real, encoder=E, vgg=vgg, lambda_feat=cfg.lambda_feat,
            lambda_kld=cfg.lambda_kld, lambda_vgg=cfg.lambda_vgg, lambda_l1=cfg.lambda_l1,
        )
    g_total.backward()
    opt_G.step()
    D_frozen.requires_grad_(True)

    opt_D.zero_grad(set_to_none=True)
    with autocast():
        d_total, d_terms = discriminator_losses(D, seg, fake.detach(), real)
    d_total.backward()
    opt_D.step()
    terms = {**g_terms, "g_total": g_total, **d_terms, "d_total": d_total}
    return {k: v.detach().float() for k, v in terms.items()}


def loss_columns(cfg: TrainConfig) -> list[str]:
    """The loss terms logged for this config, in train_log.csv order."""
    cols = ["g_gan"]
    if cfg.lambda_feat > 0:
        cols.append("g_feat")
    if cfg.use_vae:
        cols.append("g_kld")
    if cfg.perceptual_weights:
        cols.append("g_vgg")
    if cfg.lambda_l1 > 0:
        cols.append("g_l1")
    return cols + ["g_total", "d_real", "d_fake", "d_total"]


# --------------------------------------------------------------------------------------------
# Device, processes
# --------------------------------------------------------------------------------------------
def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    return _resolve_device(device, "train.device", local_rank)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment variables."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def _torch_settings(device: torch.device, threads: int | None) -> Iterator[None]:
    """Deterministic kernels and the thread count on the CPU; cuDNN autotune on CUDA. Restored
    on exit so that calling :func:`train` does not change the caller's torch."""
    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
           torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
           torch.backends.cudnn.allow_tf32)
    try:
        if threads:
            torch.set_num_threads(max(1, threads))
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        else:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        yield
    finally:
        torch.set_num_threads(old[0])
        torch.use_deterministic_algorithms(old[1])
        torch.backends.cudnn.benchmark = old[2]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[3:]


def _all_gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def _replace_dir(src: Path, dst: Path) -> None:
    """Copy folder ``src`` to ``dst`` through a temporary sibling, then swap it in."""
    with atomic_dir(dst) as tmp:
        if src.is_dir():
            for f in sorted(src.iterdir()):
                shutil.copy2(f, tmp / f.name)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------
def train(
    *,
    images_h5: Sequence[str | Path],
    annos_h5: Sequence[str | Path],
    out_dir: str | Path,
    state_dir: str | Path,
    cfg: TrainConfig,
    image_size: int,
    threads: int | None = None,
    resume: str | Path | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train SPADE on the frames of ``images_h5``/``annos_h5`` (lists of extracted train files,
    paired by position) and write the declared outputs into ``out_dir`` (see ``OUTPUTS``).

    ``state_dir`` holds the resumable training states (one folder per fingerprint, see the
    module docstring). ``resume`` names a state file to continue from instead of the one matching
    this run's fingerprint; it must have the same architecture (else CheckpointError naming the
    setting). ``threads``: CPU threads of this process. ``progress``: a tqdm bar (default: when
    stderr is a terminal) instead of one log line per ``log_every`` iterations.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; it joins the process group
    (NCCL on CUDA, gloo on the CPU), shards each batch, and only rank 0 writes files.
    """
    rank, world, local_rank = _dist_env()
    device = resolve_device(cfg.device, local_rank)
    own_group = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
        own_group = True
    elif world == 1 and cfg.gpus > 1:
        log.warning("train.gpus=%d but this is a single process: training on one device "
                    "(run_training launches torchrun for gpus > 1)", cfg.gpus)
    try:
        with _torch_settings(device, threads):
            return _train(images_h5=images_h5, annos_h5=annos_h5, out_dir=Path(out_dir),
                          state_dir=Path(state_dir), cfg=cfg, image_size=image_size,
                          resume=resume, progress=progress, rank=rank, world=world,
                          device=device)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(*, images_h5, annos_h5, out_dir: Path, state_dir: Path, cfg: TrainConfig,
           image_size: int, resume, progress, rank: int, world: int, device: torch.device
           ) -> TrainResult:
    is_main = rank == 0
    model_cfg = cfg.model_config(image_size)
    if cfg.batch_size % world:  # before reading any data
        Plan(frames=cfg.batch_size, batch_size=cfg.batch_size, epochs=1, world=world)
    images, masks = load_training_data(images_h5, annos_h5, image_size=image_size,
                                       label_nc=cfg.label_nc)
    plan = Plan(frames=len(images), batch_size=cfg.batch_size, epochs=cfg.epochs, rank=rank,
                world=world)
    data_hash = data_sha256(images, masks)
    settings = fingerprinted_settings(cfg, image_size, data_hash)
    fp = config_hash(settings)
    fp_dir = fingerprint_dir(state_dir, fp)
    mem = torch.channels_last if device.type == "cuda" and cfg.channels_last else \
        torch.contiguous_format
    batches = Batches(images, masks, plan, seed=cfg.seed, label_nc=cfg.label_nc, device=device,
                      memory_format=mem)
    columns = loss_columns(cfg)
    losses = LossLogger(columns, log_every=cfg.log_every, device=device, world=world,
                        is_main=is_main, epochs=cfg.epochs, batch_size=cfg.batch_size)
    state = TrainingState(cfg, model_cfg, plan, device, mem, losses)
    vgg = VGGPerceptualLoss(cfg.perceptual_weights) if cfg.perceptual_weights else None
    if vgg is not None:
        vgg.to(device, memory_format=mem)
    saved = select_state(resume=resume, fp_dir=fp_dir, state_name=STATE_NAME, fp=fp,
                         settings=settings, model_cfg=model_cfg, total_steps=plan.total_steps,
                         epochs=cfg.epochs, rank=rank, world=world)
    _resume_or_start(state, saved, fp_dir=fp_dir, settings=settings, device=device)
    del saved
    G, D, E, D_frozen = state.modules_to_run(world=world, device=device, compile_=cfg.compile)
    amp = bf16_autocast_enabled(device, cfg.amp)  # CUDA, and CPUs with native bf16
    autocast = functools.partial(_autocast, device.type, amp)
    grid = SampleGrid(images, masks, batches.masks, model_cfg=model_cfg, seed=cfg.seed,
                      samples_dir=fp_dir / "samples")
    live = LiveView(table=fp_dir / OUTPUTS["log_csv"], columns=columns, rows=losses.rows,
                    tensorboard_dir=out_dir / TENSORBOARD_DIR, start_step=state.step
                    ) if is_main else None
    losses.start(state.step, plan.total_steps,
                 progress_bar=sys.stderr.isatty() if progress is None else progress)
    if is_main and state.step < plan.total_steps:
        log.info("%d frames, %d iterations per epoch (batch %d = %d process(es) x %d), "
                 "%d epochs = %d iterations; device %s%s", plan.frames, plan.steps_per_epoch,
                 cfg.batch_size, world, plan.local_batch, cfg.epochs, plan.total_steps, device,
                 " (bf16 autocast)" if amp else "")

    # ---- the loop
    while state.step < plan.total_steps:
        seg, real = batches(state.step)
        lrs = state.lrs()
        terms = train_step(G=G, D=D, D_frozen=D_frozen, E=E, vgg=vgg, opt_G=state.opt_G,
                           opt_D=state.opt_D, seg=seg, real=real, cfg=cfg, autocast=autocast)
        state.advance(terms)
        step = state.step
        row = losses.after_step(step, plan.total_steps, (step - 1) // plan.steps_per_epoch + 1,
                                lrs)
        if row is not None and live is not None:
            live.row(row, losses.throughput_rows[-1]["images_per_s"])
        epoch_done = plan.epoch_done(step)
        if is_main and epoch_done and (epoch_done % cfg.sample_every == 0
                                       or epoch_done == cfg.epochs):
            live.grid(grid.save(state.ema, epoch_done, step), step)
        if step % cfg.checkpoint_every == 0 or step == plan.total_steps:
            _save_checkpoint(state, fp_dir / STATE_NAME, fp=fp, model_cfg=model_cfg,
                             settings=settings, device=device)
    losses.close()

    # ---- declared outputs, rebuilt from the state (rank 0 only)
    if is_main:
        live.close()
        if not grid.path(cfg.epochs).exists():
            grid.save(state.ema, cfg.epochs, state.step)  # e.g. a state finished long ago
        # real acquisitions' styles, grey levels and speckle: sampling needs no training data
        frame_ids = training_frame_ids(images_h5, annos_h5)
        bank = None if state.E is None else encode_bank(state.E, images, frame_ids, device)
        appearance = Appearance.measure(images, frame_ids)
        _write_outputs(out_dir=out_dir, cfg=cfg, image_size=image_size, model_cfg=model_cfg,
                       ema=state.ema, fp=fp, data_hash=data_hash, n=plan.frames,
                       images_h5=images_h5, annos_h5=annos_h5, columns=columns,
                       log_rows=losses.rows, throughput_rows=losses.throughput_rows,
                       samples_dir=grid.dir, step=state.step, style_bank=bank,
                       appearance=appearance,
                       resolved={
                           "device": device.type, "world_size": world,
                           "batch_per_process": plan.local_batch, "amp_bf16": amp,
                           "channels_last": mem is torch.channels_last,
                           "compile": cfg.compile, "steps_per_epoch": plan.steps_per_epoch,
                           "total_steps": plan.total_steps,
                           "lr_decay_start_step": plan.decay_start,
                       })
        log.info("training done: %d iterations; outputs in %s, state in %s", state.step,
                 out_dir, fp_dir / STATE_NAME)
    if world > 1:
        dist.barrier()
    return TrainResult(step=state.step, total_steps=plan.total_steps, fingerprint=fp,
                       state_path=fp_dir / STATE_NAME, generator=state.G,
                       discriminator=state.D, encoder=state.E, ema=state.ema)


def _autocast(device_type: str, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled:
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _resume_or_start(state: TrainingState, saved: dict[str, Any] | None, *, fp_dir: Path,
                     settings: dict, device: torch.device) -> None:
    """Load ``saved`` into ``state`` with this process's random streams, or prepare a fresh
    start (each process its own noise stream); record the fingerprinted settings."""
    plan, cfg = state.plan, state.cfg
    is_main = plan.rank == 0
    if saved is not None:
        state.load_state_dict(saved)
        rngs = saved["rng"]
        if len(rngs) == plan.world:
            restore_rng(rngs[plan.rank], device)
        else:
            torch.manual_seed(cfg.seed * 1000 + state.step + plan.rank)
            log.warning("the state was saved by %d processes, this run has %d: the random "
                        "streams are reseeded (training continues, not bit-exact)",
                        len(rngs), plan.world)
        if is_main:
            log.info("resuming %s at iteration %d/%d (epoch %d, batch %d of %d)",
                     fp_dir / STATE_NAME, state.step, plan.total_steps,
                     state.step // plan.steps_per_epoch + 1, state.step % plan.steps_per_epoch,
                     plan.steps_per_epoch)
    else:
        if is_main:
            log.info("training from the start; state folder %s", fp_dir)
            shutil.rmtree(fp_dir / "samples", ignore_errors=True)
        if plan.rank:
            torch.manual_seed(cfg.seed + plan.rank)  # each process its own z / noise stream
    if is_main:
        write_text_atomic(fp_dir / "fingerprint.json",
                          json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _save_checkpoint(state: TrainingState, path: Path, *, fp: str, model_cfg: ModelConfig,
                     settings: dict, device: torch.device) -> None:
    """Every process takes part (loss sums and RNG states are gathered); rank 0 writes."""
    plan = state.plan
    progress = state.state_dict()
    rngs = _all_gather(capture_rng(device), plan.world)
    if plan.rank == 0:
        save_state(path, {
            "fingerprint": fp, "model_config": model_cfg.to_dict(), "settings": settings,
            "epoch": state.step // plan.steps_per_epoch,
            "batch_in_epoch": state.step % plan.steps_per_epoch,
            "steps_per_epoch": plan.steps_per_epoch, "world_size": plan.world, **progress,
            "rng": rngs,
        })

def _write_outputs(*, out_dir: Path, cfg: TrainConfig, image_size: int, model_cfg: ModelConfig,
                   ema: nn.Module, fp: str, data_hash: str, n: int, images_h5, annos_h5,
                   columns: list[str], log_rows: list[dict], throughput_rows: list[dict],
                   samples_dir: Path, step: int, resolved: dict[str, Any],
                   style_bank: StyleBank | None = None,
                   appearance: Appearance | None = None) -> None:
    """generator.pt, config.json, train_log.csv, losses.png, samples/ and throughput.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"train": cfg.to_dict(), "image_size": image_size, "step": step,
             "epochs": cfg.epochs, "fingerprint": fp, "data_sha256": data_hash,
             "ema": True,
             # sampling from user masks checks plausibility without the training data at hand
             "plausibility": plausibility_record(annos_h5)}
    if style_bank is not None:
        extra[BANK_KEY] = style_bank.to_extra()
    if appearance is not None:
        extra.update(appearance.to_extra())
    save_generator(out_dir / OUTPUTS["generator"], ema, model_cfg, extra=extra)
    effective = {
        "train": cfg.to_dict(), "image_size": image_size, "model_config": model_cfg.to_dict(),
        "resolved": resolved, "fingerprint": fp,
        "data": {"frames": n, "sha256": data_hash, "images_h5": [str(p) for p in images_h5],
                 "annos_h5": [str(p) for p in annos_h5]},
        "log_columns": ["step", "epoch", *columns, "lr_G", "lr_D"],
        "versions": {"cardigan": __version__, "torch": torch.__version__.split("+")[0]},
    }
    write_text_atomic(out_dir / OUTPUTS["config"], json.dumps(effective, indent=2) + "\n")
    csv_cols = ["step", "epoch", *columns, "lr_G", "lr_D"]
    write_text_atomic(out_dir / OUTPUTS["log_csv"], csv_text(csv_cols, log_rows))
    write_text_atomic(out_dir / THROUGHPUT_NAME,
                  csv_text(["step", "images_per_s"], throughput_rows))
    steps = np.array([r["step"] for r in log_rows])
    data = {c: np.array([r[c] for r in log_rows]) for c in columns}
    plot_losses(out_dir / OUTPUTS["losses"], steps, data,
                groups={"generator (total)": ["g_total"],
                        "generator terms": [c for c in columns
                                            if c.startswith("g_") and c != "g_total"],
                        "discriminator (hinge)": ["d_real", "d_fake", "d_total"]},
                title=f"SPADE training losses ({cfg.epochs} epochs, {step} iterations)")
    _replace_dir(samples_dir, out_dir / OUTPUTS["samples"])


# --------------------------------------------------------------------------------------------
# Launching: one process, or torchrun for DDP
# --------------------------------------------------------------------------------------------
def ddp_command(args_file: str | Path, nproc: int) -> list[str]:
    """The torchrun command line (``python -m torch.distributed.run`` is torchrun) that runs
    :func:`main` in ``nproc`` processes on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "cardigan.train", "--args", str(args_file)]


def run_training(*, images_h5: Sequence[str | Path], annos_h5: Sequence[str | Path],
                 out_dir: str | Path, state_dir: str | Path, cfg: TrainConfig, image_size: int,
                 threads: int | None = None, resume: str | Path | None = None) -> None:
    """What the workflow calls: :func:`train` in this process, or under torchrun with
    ``cfg.gpus`` processes (DDP) when ``gpus > 1``; their output goes to our log."""
    if cfg.gpus <= 1:
        train(images_h5=images_h5, annos_h5=annos_h5, out_dir=out_dir, state_dir=state_dir,
              cfg=cfg, image_size=image_size, threads=threads, resume=resume)
        return
    device = resolve_device(cfg.device)
    if device.type == "cuda" and torch.cuda.device_count() < cfg.gpus:
        raise RuntimeError(f"config key train.gpus: {cfg.gpus} requested but only "
                           f"{torch.cuda.device_count()} CUDA device(s) are visible")
    args = {"images_h5": [str(p) for p in images_h5], "annos_h5": [str(p) for p in annos_h5],
            "out_dir": str(out_dir), "state_dir": str(state_dir), "train": cfg.to_dict(),
            "image_size": image_size,
            "threads": max(1, (threads or os.cpu_count() or 1) // cfg.gpus),
            "resume": str(resume) if resume is not None else None}
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=state_dir, prefix=".torchrun-", suffix=".json",
                                     delete=False) as fh:
        json.dump(args, fh)
    try:
        cmd = ddp_command(fh.name, cfg.gpus)
        log.info("DDP on %d processes (%s): %s", cfg.gpus, device.type, " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.info("%s", line.rstrip())
        if proc.wait():
            raise RuntimeError(f"torchrun exited with status {proc.returncode} (see the lines "
                               f"above); the training state in {state_dir} is kept for resuming")
    finally:
        Path(fh.name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m cardigan.train`` / ``cardigan train``: one process of a (DDP) training run.

    Either ``--args FILE`` (a JSON file as written by :func:`run_training`), or the arguments
    one by one with ``--train-config`` a YAML/JSON file holding the ``train`` section (or a
    whole config with a ``train`` key).
    """
    p = argparse.ArgumentParser(prog="cardigan train", description=main.__doc__)
    p.add_argument("--args", help="JSON file with every argument of cardigan.train.train")
    p.add_argument("--images", nargs="+", help="extracted train image files (train_{view}.h5)")
    p.add_argument("--annos", nargs="+", help="matching annotation files (anno_train_{view}.h5)")
    p.add_argument("--out-dir", default="results/train")
    p.add_argument("--state-dir", default="results/train/state")
    p.add_argument("--train-config", help="YAML/JSON file with the train section")
    p.add_argument("--image-size", type=int, default=default("data", "image_size"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", default=None, help="a training-state file to continue from")
    a = p.parse_args(argv)
    if a.args:
        args = json.loads(Path(a.args).read_text())
    else:
        if not (a.images and a.annos and a.train_config):
            p.error("give --args, or --images, --annos and --train-config")
        section = yaml.safe_load(Path(a.train_config).read_text()) or {}
        args = {"images_h5": a.images, "annos_h5": a.annos, "out_dir": a.out_dir,
                "state_dir": a.state_dir, "train": section.get("train", section),
                "image_size": a.image_size, "threads": a.threads, "resume": a.resume}
    rank = int(os.environ.get("RANK", 0))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    cfg = TrainConfig.from_dict(args.pop("train"))
    train(cfg=cfg, **args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
