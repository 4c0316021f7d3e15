"""The SPADE training loop: mask -> image on the extracted train split, resumable exactly.

One function, :func:`train`, does the whole stage (in the spirit of EDM's ``training_loop``): load
the frames into memory, build the networks (:mod:`cardigan.gan.model`), and alternate a generator and
a discriminator update (:func:`train_step`, :mod:`cardigan.gan.losses`, as in NVlabs/SPADE) for
``epochs`` passes over the data, keeping an exponential moving average (EMA) of the generator's
weights for sampling. Where things live:

- :mod:`cardigan.gan.train_config`: ``TrainConfig``, the ``train`` section;
- :mod:`cardigan.gan.state`: ``TrainingState`` (networks, EMA, optimisers, lr schedules,
  iteration, loss log; ``state_dict``/``load_state_dict`` = the checkpoint's keys), ``Plan`` (the
  run's arithmetic), ``Batches``, ``select_state`` (which saved state to continue);
  :mod:`cardigan.gan.fingerprint` says which states a run may continue;
- :mod:`cardigan.gan.train_log`: ``LossLogger`` (running means, progress bar, log lines),
  ``SampleGrid``, ``LiveView`` (the loss table in the state folder as training goes,
  TensorBoard when installed);
- :mod:`cardigan.gan.outputs`: ``TrainOutputs``, the declared outputs;
  :mod:`cardigan.gan.launch`: one process or torchrun (DDP);
- here: :func:`train_step` and the loop (``train``: set up, resume, iterate, write).

Choices worth knowing:

- **Exact resume.** Everything that determines the next iteration is in one checkpoint
  (:mod:`cardigan.gan.checkpoint`): weights, optimiser and lr-schedule states, the iteration count (the
  epoch and the batch within it follow from it, the epoch's order is regenerated from
  ``(seed, epoch)``), the RNG states of every process (each its own CUDA device's only, so a
  state resumes with fewer GPUs visible), and the partial loss averages of the current logging
  interval. On the CPU a run killed after k iterations and started again ends with the
  same weights, log rows and sample grids, bit for bit, as one that was never interrupted.
- **Stale weights are never reused.** A state is valid for a *fingerprint*: the hash of the model
  config, every training setting that changes the weights (not ``epochs``, not the
  logging/checkpoint/sample frequencies, not the device, ``gpus``, ``amp``, ``channels_last`` or
  ``compile``), the training data itself, and the model code (:mod:`cardigan.gan.model` and what it
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
- **lr.** Adam with the two time-scale rule; constant for the first ``lr_decay_start`` share of
  the epochs (whole epochs), then linear decay per iteration to zero at the end.
- **EMA** with the usual warm-up, decay ``min(ema_decay, (1 + t) / (ema_warmup + t))`` at update
  t, so a short run's average is not dominated by the random initial weights.
- The discriminator update reuses the generator update's (detached) fake batch instead of running
  the generator a second time (pix2pixHD's order; the reference regenerates it): one generator
  forward per iteration instead of two.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cardigan.core.atomic import write_text_atomic
from cardigan.core.config import config_hash
from cardigan.core.device import bf16_autocast_enabled
from cardigan.gan.appearance import Appearance
from cardigan.gan.background import BackgroundBank, condition_maps
from cardigan.gan.checkpoint import (
    STATE_NAME,
    capture_rng,
    fingerprint_dir,
    restore_rng,
    save_state,
)
from cardigan.gan.diffaug import parse_policy
from cardigan.gan.fingerprint import fingerprinted_settings
from cardigan.gan.losses import VGGPerceptualLoss, discriminator_losses, generator_losses
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.outputs import OUTPUTS, TrainOutputs
from cardigan.gan.processes import all_gather, dist_env, resolve_device, torch_settings
from cardigan.gan.state import Batches, Plan, TrainingState, select_state
from cardigan.gan.styles import encode_bank
from cardigan.gan.train_config import TrainConfig
from cardigan.gan.train_log import TENSORBOARD_DIR, LiveView, LossLogger, SampleGrid
from cardigan.gan.training_data import data_sha256, load_training_data, training_frame_ids

log = logging.getLogger("cardigan")


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


def train_step(
    *, G: nn.Module, D: nn.Module, D_frozen: nn.Module, E: nn.Module | None,
    vgg: nn.Module | None, opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer,
    seg: torch.Tensor, real: torch.Tensor, cfg: TrainConfig, autocast: Callable[[], Any],
    r1: bool = False,
) -> dict[str, torch.Tensor]:
    """One iteration: a generator (and encoder) update, then a discriminator update, with the
    R1 penalty where ``r1`` (every ``train.r1_every`` iterations, weighted by it).

    ``G``/``D``/``E`` may be DDP/compiled wrappers; ``D_frozen`` is the plain discriminator that
    the generator loss runs through with its weights frozen (no DDP gradient sync for D there).
    Returns the detached loss terms.
    """
    diffaug = parse_policy(cfg.diffaug)
    kind = cfg.network["discriminator"]
    D_frozen.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with autocast():
        g_total, g_terms, fake = generator_losses(
            G, D_frozen, seg, real, encoder=E, vgg=vgg, lambda_feat=cfg.lambda_feat,
            lambda_kld=cfg.lambda_kld, lambda_vgg=cfg.lambda_vgg, lambda_l1=cfg.lambda_l1,
            l1_balance=cfg.l1_balance,
            diffaug=diffaug, discriminator_kind=kind,
        )
    g_total.backward()
    opt_G.step()
    D_frozen.requires_grad_(True)

    opt_D.zero_grad(set_to_none=True)
    with autocast():
        d_total, d_terms = discriminator_losses(
            D, seg, fake.detach(), real, diffaug, discriminator_kind=kind,
            lambda_labelmix=cfg.lambda_labelmix,
            r1_weight=cfg.r1_gamma * cfg.r1_every if r1 else 0.0, r1_discriminator=D_frozen)
    if cfg.r1_gamma > 0 and not r1:
        d_terms["d_r1"] = torch.zeros((), device=d_total.device)  # logged as its lazy mean
    d_total.backward()
    opt_D.step()
    terms = {**g_terms, "g_total": g_total, **d_terms, "d_total": d_total}
    return {k: v.detach().float() for k, v in terms.items()}


def loss_columns(cfg: TrainConfig) -> list[str]:
    """The loss terms logged for this config, in train_log.csv order."""
    cols = ["g_gan"]
    if cfg.lambda_feat > 0:
        cols.append("g_feat")
    if cfg.network["use_vae"]:
        cols.append("g_kld")
    if cfg.perceptual_weights:
        cols.append("g_vgg")
    if cfg.lambda_l1 > 0:
        cols.append("g_l1")
    cols += ["g_total", "d_real", "d_fake"]
    if cfg.network["discriminator"] == "oasis" and cfg.lambda_labelmix > 0:
        cols.append("d_labelmix")
    if cfg.r1_gamma > 0:
        cols.append("d_r1")
    return cols + ["d_total"]


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
    rank, world, local_rank = dist_env()
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
        with torch_settings(device, threads):
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
    Plan.check_batch(cfg.batch_size, world)  # before reading any data

    # ---- the data, the run's arithmetic, and the fingerprint of its weights
    images, masks = load_training_data(images_h5, annos_h5, image_size=image_size,
                                       label_nc=model_cfg.label_nc)
    plan = Plan(frames=len(images), batch_size=cfg.batch_size, epochs=cfg.epochs, rank=rank,
                world=world, decay_share=cfg.lr_decay_start)
    data_hash = data_sha256(images, masks)
    settings = fingerprinted_settings(cfg, image_size, data_hash)
    fp = config_hash(settings)
    fp_dir = fingerprint_dir(state_dir, fp)

    # ---- the training state: fresh, or continued from the saved one
    mem = torch.channels_last if device.type == "cuda" and cfg.channels_last else \
        torch.contiguous_format
    # the map the networks are conditioned on: the masks, and the background's pseudo-classes
    cond = condition_maps(images, masks, model_cfg.background_classes, model_cfg.label_nc)
    batches = Batches(images, cond, plan, seed=cfg.seed, label_nc=model_cfg.cond_nc,
                      device=device, memory_format=mem)
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
                           opt_D=state.opt_D, seg=seg, real=real, cfg=cfg, autocast=autocast,
                           r1=cfg.r1_gamma > 0 and state.step % cfg.r1_every == 0)
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

    # ---- the declared outputs, rebuilt from the state (rank 0 only)
    if is_main:
        live.close()
        if not grid.path(cfg.epochs).exists():
            grid.save(state.ema, cfg.epochs, state.step)  # e.g. a state finished long ago
        outputs = TrainOutputs(
            out_dir=out_dir, cfg=cfg, model_cfg=model_cfg, fingerprint=fp,
            data_sha256=data_hash, images_h5=tuple(map(str, images_h5)),
            annos_h5=tuple(map(str, annos_h5)), frames=plan.frames, columns=tuple(columns))
        out_dir.mkdir(parents=True, exist_ok=True)
        # real acquisitions' styles, grey levels and speckle: sampling needs no training data
        frame_ids = training_frame_ids(images_h5, annos_h5)
        bank = None if state.E is None else encode_bank(state.E, images, frame_ids, device)
        background = None if not model_cfg.background_classes else BackgroundBank.build(
            cond, frame_ids, model_cfg.label_nc)
        outputs.write_generator(state.ema, state.step, bank,
                                Appearance.measure(images, frame_ids), background)
        outputs.write_config({
            "device": device.type, "world_size": world, "batch_per_process": plan.local_batch,
            "amp_bf16": amp, "channels_last": mem is torch.channels_last,
            "compile": cfg.compile, "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps, "lr_decay_start_step": plan.decay_start,
        })
        outputs.write_logs(losses.rows, losses.throughput_rows, state.step)
        outputs.write_samples(grid.dir)
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
    rngs = all_gather(capture_rng(device), plan.world)
    if plan.rank == 0:
        save_state(path, {
            "fingerprint": fp, "model_config": model_cfg.to_dict(), "settings": settings,
            "epoch": state.step // plan.steps_per_epoch,
            "batch_in_epoch": state.step % plan.steps_per_epoch,
            "steps_per_epoch": plan.steps_per_epoch, "world_size": plan.world, **progress,
            "rng": rngs,
        })
