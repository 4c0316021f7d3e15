"""The SPADE training loop: mask -> image on the extracted train split, resumable exactly.

One function, :func:`train`, does the whole stage (like nanoGPT's or EDM's training loop): load the
frames into memory, build the networks (:mod:`cardigan.model`), and alternate a generator and a
discriminator update (:mod:`cardigan.losses`, as in NVlabs/SPADE) for ``epochs`` passes over the
data, keeping an exponential moving average (EMA) of the generator's weights for sampling.

Choices worth knowing:

- **Exact resume.** Everything that determines the next iteration is in one checkpoint
  (:mod:`cardigan.checkpoint`): weights, optimiser and lr-schedule states, the iteration count (the
  epoch and the batch within it follow from it, the epoch's order is regenerated from
  ``(seed, epoch)``), the RNG states of every process, and the partial loss averages of the current
  logging interval. On the CPU a run killed after k iterations and started again ends with the
  same weights, log rows and sample grids, bit for bit, as one that was never interrupted.
- **Stale weights are never reused.** A state is valid for a *fingerprint*: the hash of the model
  config, every training setting that changes the weights (not ``epochs``, not the
  logging/checkpoint/sample frequencies, not the device, ``gpus``, ``amp``, ``channels_last`` or
  ``compile``), and the training data itself. States live in ``state_dir/<fingerprint[:16]>/``;
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
import copy
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import __version__
from .atomic import atomic_dir, write_text_atomic
from .checkpoint import (
    STATE_NAME,
    CheckpointError,
    capture_rng,
    check_model_config,
    fingerprint_dir,
    load_state,
    restore_rng,
    save_state,
)
from .config import config_hash
from .dataio import iter_frames, mask_key
from .device import bf16_autocast_enabled
from .device import resolve_device as _resolve_device
from .losses import VGGPerceptualLoss, discriminator_losses, generator_losses
from .model import ModelConfig, build_models, save_generator
from .sample import plausibility_record
from .plots import label_rgb, plot_losses, save_grid

log = logging.getLogger("cardigan")

#: Declared outputs of the train rule, by rule output name, relative to ``out_dir``.
OUTPUTS = {
    "generator": "generator.pt",
    "config": "config.json",
    "log_csv": "train_log.csv",
    "losses": "losses.png",
    "samples": "samples",
}
THROUGHPUT_NAME = "throughput.csv"  # timings: beside the outputs, deliberately not declared
#: Settings that do not change the trained weights (or, for epochs, only how far training goes):
#: left out of the state fingerprint so that changing them resumes instead of retraining.
NOT_FINGERPRINTED = ("epochs", "log_every", "checkpoint_every", "sample_every", "device", "gpus",
                     "amp", "channels_last", "compile")
GRID_MASKS = 6  # fixed masks in every sample grid
GRID_STYLES = 2  # fixed style codes per mask with the VAE


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of the config (defaults as in workflow/schemas/config.schema.yaml)."""

    device: str = "auto"
    gpus: int = 1
    seed: int = 0
    epochs: int = 60
    batch_size: int = 8
    ngf: int = 16
    ndf: int = 16
    num_upsampling_layers: str = "normal"
    norm_G: str = "instance"
    norm_D: str = "instance"
    spade_hidden: int = 128
    num_D: int = 2
    n_layers_D: int = 4
    label_nc: int = 4
    use_vae: bool = False
    z_dim: int = 256
    lr_G: float = 1e-4
    lr_D: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    lambda_feat: float = 10.0
    lambda_kld: float = 0.05
    lambda_vgg: float = 10.0
    perceptual_weights: str | None = None
    ema_decay: float = 0.999
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    log_every: int = 10
    checkpoint_every: int = 100
    sample_every: int = 10

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
    return {"model": cfg.model_config(image_size).to_dict(), "train": settings, "data": data_hash}


def lr_factor(step: int, total_steps: int, decay_start: int) -> float:
    """Multiplier of the base lr for the update at (0-based) iteration ``step``: 1 until
    ``decay_start``, then linear to 0 at ``total_steps``."""
    if step < decay_start:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))


def ema_decay_at(update: int, decay: float) -> float:
    """EMA decay for the ``update``-th (0-based) update, with warm-up."""
    return min(decay, (1.0 + update) / (10.0 + update))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers (spectral-norm
    vectors, batch-norm statistics) are copied."""
    e_params = [p for p in ema.parameters()]
    m_params = [p.detach() for p in model.parameters()]
    if len(e_params) != len(m_params):
        raise ValueError("EMA and model have different parameter lists")
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled frame order of one epoch, regenerated from (seed, epoch) on resume."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def one_hot_unchecked(mask: torch.Tensor, label_nc: int) -> torch.Tensor:
    """One-hot of masks already validated by :func:`load_training_data`: no value check, so no
    host-device sync per batch (``cardigan.model.one_hot`` checks and syncs)."""
    b, h, w = mask.shape
    out = torch.zeros(b, label_nc, h, w, device=mask.device)
    return out.scatter_(1, mask.long().unsqueeze(1), 1.0)


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
            lambda_kld=cfg.lambda_kld, lambda_vgg=cfg.lambda_vgg,
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
def _csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in columns])
    return buf.getvalue()


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _replace_dir(src: Path, dst: Path) -> None:
    """Copy folder ``src`` to ``dst`` through a temporary sibling, then swap it in."""
    with atomic_dir(dst) as tmp:
        if src.is_dir():
            for f in sorted(src.iterdir()):
                shutil.copy2(f, tmp / f.name)


def _grid_rows(masks: np.ndarray, reals: np.ndarray, fakes: np.ndarray, label_nc: int
               ) -> list[list[np.ndarray]]:
    """Rows of a sample grid: mask (colour), real image, then one generated image per style."""
    rows = []
    for i in range(len(masks)):
        rows.append([label_rgb(masks[i], label_nc), reals[i]] + [f[i] for f in fakes])
    return rows


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
    cuda = device.type == "cuda"
    if cfg.batch_size % world:
        raise ValueError(f"config key train.batch_size: {cfg.batch_size} is not divisible by "
                         f"the {world} processes (train.gpus): it is the global batch")
    local_batch = cfg.batch_size // world
    model_cfg = cfg.model_config(image_size)

    # ---- data: in memory (on the GPU when training there), validated before anything else
    images_np, masks_np = load_training_data(images_h5, annos_h5, image_size=image_size,
                                             label_nc=cfg.label_nc)
    n = len(images_np)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"config key train.batch_size: {cfg.batch_size} is larger than the "
                         f"{n} training frames")
    total_steps = cfg.epochs * steps_per_epoch
    decay_start = (cfg.epochs // 2) * steps_per_epoch
    data_hash = data_sha256(images_np, masks_np)
    settings = fingerprinted_settings(cfg, image_size, data_hash)
    fp = config_hash(settings)
    images_t = torch.from_numpy(images_np).to(device)
    masks_t = torch.from_numpy(masks_np).to(device)

    # ---- networks, optimisers, schedules (built from the seed on every rank: identical)
    torch.manual_seed(cfg.seed)
    G, D, E = build_models(model_cfg)
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    vgg = VGGPerceptualLoss(cfg.perceptual_weights) if cfg.perceptual_weights else None
    if world > 1 and "batch" in (cfg.norm_G, cfg.norm_D):
        if cuda:  # the paper's synchronised batch norm
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
            D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        elif is_main:
            log.warning("batch norm under DDP on the CPU: PyTorch's SyncBatchNorm needs CUDA, so "
                        "each process normalises with its own batch statistics")
    mem = torch.channels_last if (cuda and cfg.channels_last) else torch.contiguous_format
    for m in (G, D, E, ema, vgg):
        if m is not None:
            m.to(device, memory_format=mem)
    g_params = list(G.parameters()) + (list(E.parameters()) if E is not None else [])
    betas = (float(cfg.beta1), float(cfg.beta2))
    opt_G = torch.optim.Adam(g_params, lr=cfg.lr_G, betas=betas)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_D, betas=betas)

    def schedule(step: int) -> float:  # a plain function: LambdaLR does not store it
        return lr_factor(step, total_steps, decay_start)

    sched_G = torch.optim.lr_scheduler.LambdaLR(opt_G, schedule)
    sched_D = torch.optim.lr_scheduler.LambdaLR(opt_D, schedule)
    columns = loss_columns(cfg)

    # ---- find the state to resume
    fp_dir = fingerprint_dir(state_dir, fp)
    state_path = fp_dir / STATE_NAME
    samples_dir = fp_dir / "samples"
    if is_main:
        others = sorted(p.name for p in state_dir.glob("*") if p.is_dir() and p != fp_dir)
        if others:
            log.info("%s also holds states of other settings or data (not used here): %s",
                     state_dir, ", ".join(others))
    state = _select_state(resume=resume, state_path=state_path, fp=fp, settings=settings,
                          model_cfg=model_cfg, total_steps=total_steps, is_main=is_main)
    if world > 1:
        dist.barrier()  # every rank has read the state before rank 0 may move it aside
    if state is not None and state["step"] > total_steps:
        if is_main:
            aside = fp_dir.with_name(f"{fp_dir.name}.superseded-it{state['step']}")
            log.warning(
                "the state in %s has trained %d iterations, more than the %d that train.epochs="
                "%d asks for: moved it to %s and training again from the start", fp_dir,
                state["step"], total_steps, cfg.epochs, aside)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(fp_dir, aside)
        state = None
    if world > 1:
        dist.barrier()

    step = 0
    log_rows: list[dict[str, Any]] = []
    throughput_rows: list[dict[str, Any]] = []
    log_acc = torch.zeros(len(columns), dtype=torch.float64, device=device)
    log_count = 0
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        if E is not None:
            E.load_state_dict(state["E"])
        ema.load_state_dict(state["ema"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        sched_G.load_state_dict(state["sched_G"])
        sched_D.load_state_dict(state["sched_D"])
        step = int(state["step"])
        for opt, sched in ((opt_G, sched_G), (opt_D, sched_D)):
            # The schedule of the *current* total (more epochs: no longer decaying to 0 here).
            for group, base in zip(opt.param_groups, sched.base_lrs):
                group["lr"] = base * schedule(step)
            sched._last_lr = [g["lr"] for g in opt.param_groups]
        log_rows = [dict(r) for r in state["log_rows"]]
        throughput_rows = [dict(r) for r in state["throughput_rows"]]
        if is_main:
            log_acc = state["log_acc"]["sum"].to(device=device, dtype=torch.float64)
        log_count = int(state["log_acc"]["count"])
        rngs = state["rng"]
        if len(rngs) == world:
            restore_rng(rngs[rank])
        else:
            torch.manual_seed(cfg.seed * 1000 + step + rank)
            log.warning("the state was saved by %d processes, this run has %d: the random "
                        "streams are reseeded (training continues, not bit-exact)",
                        len(rngs), world)
        if is_main:
            log.info("resuming %s at iteration %d/%d (epoch %d, batch %d of %d)", state_path,
                     step, total_steps, step // steps_per_epoch + 1,
                     step % steps_per_epoch, steps_per_epoch)
    else:
        if is_main:
            log.info("training from the start; state folder %s", fp_dir)
            shutil.rmtree(samples_dir, ignore_errors=True)
        if rank:
            torch.manual_seed(cfg.seed + rank)  # each process its own z / noise stream
    if is_main:
        write_text_atomic(fp_dir / "fingerprint.json", json.dumps(settings, indent=2, sort_keys=True)
                      + "\n")
    del state

    # ---- wrappers: DDP for gradient sync, torch.compile when asked
    G_run, D_run, E_run, D_frozen = G, D, E, D
    if world > 1:
        ids = [device.index] if cuda else None
        G_run = DDP(G, device_ids=ids)
        D_run = DDP(D, device_ids=ids)
        E_run = DDP(E, device_ids=ids) if E is not None else None
    if cfg.compile:
        G_run, D_run, D_frozen = torch.compile(G_run), torch.compile(D_run), torch.compile(D)
        E_run = torch.compile(E_run) if E_run is not None else None
    # bf16 autocast on CUDA, and on CPUs with native bf16 (about 1.6x faster there).
    amp = bf16_autocast_enabled(device, cfg.amp)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    # ---- fixed masks and style codes for the sample grids
    grid_idx = np.unique(np.linspace(0, n - 1, min(GRID_MASKS, n)).round().astype(int))
    grid_seg = one_hot_unchecked(masks_t[grid_idx], cfg.label_nc)
    grid_z = None
    if cfg.use_vae:
        gen = torch.Generator().manual_seed(cfg.seed)
        grid_z = torch.randn(GRID_STYLES, len(grid_idx), cfg.z_dim, generator=gen).to(device)

    def sample_grid(epoch: int) -> None:
        with torch.no_grad():
            fakes = [ema(grid_seg, z).float().cpu().numpy()[:, 0]
                     for z in (grid_z if grid_z is not None else [None])]
        save_grid(samples_dir / f"epoch_{epoch:04d}.png",
                  _grid_rows(masks_np[grid_idx], images_np[grid_idx], fakes, cfg.label_nc),
                  col_titles=["mask", "real"] + ["generated"] * len(fakes),
                  title=f"epoch {epoch} (iteration {step})", scale=max(1.0, 96 / image_size))

    def checkpoint() -> None:
        acc = log_acc.clone()
        if world > 1:
            dist.all_reduce(acc)
        rngs = _all_gather(capture_rng(), world)
        if is_main:
            save_state(state_path, {
                "fingerprint": fp, "model_config": model_cfg.to_dict(), "settings": settings,
                "step": step, "epoch": step // steps_per_epoch,
                "batch_in_epoch": step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                "world_size": world, "G": G.state_dict(), "D": D.state_dict(),
                "E": E.state_dict() if E is not None else None, "ema": ema.state_dict(),
                "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                "sched_G": sched_G.state_dict(), "sched_D": sched_D.state_dict(),
                "rng": rngs, "log_rows": log_rows, "throughput_rows": throughput_rows,
                "log_acc": {"sum": acc, "count": log_count},
            })

    # ---- the loop
    interactive = sys.stderr.isatty() if progress is None else progress
    bar = None
    if is_main and interactive and step < total_steps:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="it", dynamic_ncols=True)
    if is_main and step < total_steps:
        log.info("%d frames, %d iterations per epoch (batch %d = %d process(es) x %d), "
                 "%d epochs = %d iterations; device %s%s", n, steps_per_epoch, cfg.batch_size,
                 world, local_batch, cfg.epochs, total_steps, device,
                 " (bf16 autocast)" if amp else "")
    G_run.train()
    D_run.train()
    if E_run is not None:
        E_run.train()
    t_last, step_last = time.perf_counter(), step
    while step < total_steps:
        epoch, batch = divmod(step, steps_per_epoch)
        order = epoch_order(cfg.seed, epoch, n)
        idx = order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size]
        idx = torch.from_numpy(idx[rank * local_batch:(rank + 1) * local_batch]).to(device)
        real = images_t[idx].unsqueeze(1).float().div_(127.5).sub_(1.0)
        seg = one_hot_unchecked(masks_t[idx], cfg.label_nc)
        if mem is torch.channels_last:
            real = real.contiguous(memory_format=mem)
            seg = seg.contiguous(memory_format=mem)
        lr_used = (opt_G.param_groups[0]["lr"], opt_D.param_groups[0]["lr"])
        terms = train_step(G=G_run, D=D_run, D_frozen=D_frozen, E=E_run, vgg=vgg, opt_G=opt_G,
                           opt_D=opt_D, seg=seg, real=real, cfg=cfg, autocast=autocast)
        sched_G.step()
        sched_D.step()
        ema_update(ema, G, ema_decay_at(step, cfg.ema_decay))
        log_acc += torch.stack([terms[c] for c in columns]).double()
        log_count += 1
        step += 1
        epoch_done = step % steps_per_epoch == 0
        epoch_now = (step - 1) // steps_per_epoch + 1

        if step % cfg.log_every == 0 or step == total_steps:
            acc = log_acc.clone()
            if world > 1:
                dist.all_reduce(acc)
            means = (acc / (log_count * world)).tolist()
            log_acc.zero_()
            log_count = 0
            now = time.perf_counter()
            ips = (step - step_last) * cfg.batch_size / max(now - t_last, 1e-9)
            t_last, step_last = now, step
            row = {"step": step, "epoch": epoch_now, **dict(zip(columns, means)),
                   "lr_G": lr_used[0], "lr_D": lr_used[1]}
            log_rows.append(row)
            throughput_rows.append({"step": step, "images_per_s": ips})
            if is_main:
                summary = " ".join(f"{c} {row[c]:.3f}" for c in columns)
                if bar is not None:
                    bar.set_postfix_str(f"{summary} | {ips:.1f} img/s", refresh=False)
                else:
                    log.info("epoch %d/%d it %d/%d | %s | lr_G %.2e lr_D %.2e | %.1f img/s",
                             epoch_now, cfg.epochs, step, total_steps, summary, lr_used[0],
                             lr_used[1], ips)
        if bar is not None:
            bar.update(1)
        if epoch_done and is_main and (epoch_now % cfg.sample_every == 0
                                       or epoch_now == cfg.epochs):
            sample_grid(epoch_now)
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            checkpoint()
    if bar is not None:
        bar.close()

    # ---- declared outputs, rebuilt from the state (rank 0 only)
    if is_main:
        if not (samples_dir / f"epoch_{cfg.epochs:04d}.png").exists():
            sample_grid(cfg.epochs)  # e.g. a state finished by an older run without this grid
        _write_outputs(out_dir=out_dir, cfg=cfg, image_size=image_size, model_cfg=model_cfg,
                       ema=ema, fp=fp, data_hash=data_hash, n=n, images_h5=images_h5,
                       annos_h5=annos_h5, columns=columns, log_rows=log_rows,
                       throughput_rows=throughput_rows, samples_dir=samples_dir, step=step,
                       resolved={
                           "device": device.type, "world_size": world,
                           "batch_per_process": local_batch, "amp_bf16": amp,
                           "channels_last": mem is torch.channels_last,
                           "compile": cfg.compile, "steps_per_epoch": steps_per_epoch,
                           "total_steps": total_steps, "lr_decay_start_step": decay_start,
                       })
        log.info("training done: %d iterations; outputs in %s, state in %s", step, out_dir,
                 state_path)
    if world > 1:
        dist.barrier()
    return TrainResult(step=step, total_steps=total_steps, fingerprint=fp, state_path=state_path,
                       generator=G, discriminator=D, encoder=E, ema=ema)


def _select_state(*, resume, state_path: Path, fp: str, settings: dict, model_cfg: ModelConfig,
                  total_steps: int, is_main: bool) -> dict[str, Any] | None:
    """The state to continue from, or None to start afresh. Refuses (CheckpointError) a
    corrupt file or one of a different architecture; never silently ignores a file."""
    path = Path(resume) if resume is not None else state_path
    if resume is None and not path.exists():
        return None
    state = load_state(path)
    check_model_config(path, state, model_cfg)
    if state["fingerprint"] != fp:
        saved = state["settings"]
        diff = [f"train.{k}" for k in sorted(set(saved["train"]) | set(settings["train"]))
                if saved["train"].get(k) != settings["train"].get(k)]
        if saved["data"] != settings["data"]:
            diff.append("the training data")
        if resume is None:
            raise CheckpointError(
                f"training state {path} belongs to other settings ({', '.join(diff) or '?'}) "
                f"than the folder it is in; move it away or delete it"
            )
        if is_main:
            log.warning("resuming %s although it was trained with other settings: %s differ",
                        path, ", ".join(diff))
    if resume is not None and int(state["step"]) > total_steps:
        raise CheckpointError(f"training state {path} has trained {state['step']} iterations, "
                              f"more than the {total_steps} of this run: raise train.epochs")
    return state


def _write_outputs(*, out_dir: Path, cfg: TrainConfig, image_size: int, model_cfg: ModelConfig,
                   ema: nn.Module, fp: str, data_hash: str, n: int, images_h5, annos_h5,
                   columns: list[str], log_rows: list[dict], throughput_rows: list[dict],
                   samples_dir: Path, step: int, resolved: dict[str, Any]) -> None:
    """generator.pt, config.json, train_log.csv, losses.png, samples/ and throughput.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"train": cfg.to_dict(), "image_size": image_size, "step": step,
             "epochs": cfg.epochs, "fingerprint": fp, "data_sha256": data_hash,
             "ema": True,
             # sampling from user masks checks plausibility without the training data at hand
             "plausibility": plausibility_record(annos_h5)}
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
    write_text_atomic(out_dir / OUTPUTS["log_csv"], _csv_text(csv_cols, log_rows))
    write_text_atomic(out_dir / THROUGHPUT_NAME,
                  _csv_text(["step", "images_per_s"], throughput_rows))
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
    p.add_argument("--image-size", type=int, default=128)
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
