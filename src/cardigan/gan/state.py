"""What a training run carries from one iteration to the next, and which saved state it continues.

- :class:`TrainingState` owns the networks, the EMA generator, both optimisers and lr schedules,
  the iteration count and the loss log, and turns them into the checkpoint's keys and back
  (``state_dict`` / ``load_state_dict``).
- :class:`Plan` is the arithmetic of a run (iterations per epoch, total, lr decay start, the
  process's slice of each batch); :class:`Batches` cuts the batches out of the in-memory frames.
- :func:`select_state` finds the state to continue (its fingerprint folder, an explicit
  ``resume`` file) and moves a superseded one aside.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cardigan.gan.checkpoint import CheckpointError, check_model_config, load_state
from cardigan.gan.layers import one_hot
from cardigan.gan.model import build_models
from cardigan.gan.model_config import ModelConfig

if TYPE_CHECKING:
    from cardigan.gan.train_config import TrainConfig
    from cardigan.gan.train_log import LossLogger

log = logging.getLogger("cardigan")


# --------------------------------------------------------------------------------------------
# Small pure pieces
# --------------------------------------------------------------------------------------------
def lr_factor(step: int, total_steps: int, decay_start: int) -> float:
    """Multiplier of the base lr for the update at (0-based) iteration ``step``: 1 until
    ``decay_start``, then linear to 0 at ``total_steps``."""
    if step < decay_start:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))


def ema_decay_at(update: int, decay: float, warmup: float) -> float:
    """EMA decay for the ``update``-th (0-based) update, with warm-up: ``min(decay, (1 + t) /
    (warmup + t))``, so the average's weight on update s at update T > s falls off about like
    ``(s / T) ** (warmup - 1)`` until the plain decay takes over."""
    return min(decay, (1.0 + update) / (warmup + update))


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


# --------------------------------------------------------------------------------------------
# The run's arithmetic and its batches
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Iterations of a run of ``frames`` frames, and this process's share of each batch."""

    frames: int
    batch_size: int
    epochs: int
    rank: int = 0
    world: int = 1
    decay_share: float = 0.5  # train.lr_decay_start

    @staticmethod
    def check_batch(batch_size: int, world: int) -> None:
        """The global batch must split evenly over the processes."""
        if batch_size % world:
            raise ValueError(f"config key train.batch_size: {batch_size} is not divisible "
                             f"by the {world} processes (train.gpus): it is the global batch")

    def __post_init__(self) -> None:
        self.check_batch(self.batch_size, self.world)
        if self.steps_per_epoch == 0:
            raise ValueError(f"config key train.batch_size: {self.batch_size} is larger than "
                             f"the {self.frames} training frames")

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.frames // self.batch_size  # the last incomplete batch is dropped

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def decay_start(self) -> int:
        # the epsilon keeps a share that is a whole number of epochs from rounding one down
        return math.floor(self.epochs * self.decay_share + 1e-9) * self.steps_per_epoch

    def lr(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.decay_start)

    def epoch_done(self, step: int) -> int | None:
        """The (1-based) epoch that iteration count ``step`` completes, else None."""
        return step // self.steps_per_epoch if step % self.steps_per_epoch == 0 else None


class Batches:
    """(seg, real) of iteration ``step`` for this process, from uint8 frames held on the device.

    The epoch's order goes to the device once per epoch, so taking a batch never waits for the
    device (a per-iteration index copy from pageable memory would)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, plan: Plan, *, seed: int,
                 label_nc: int, device: torch.device, memory_format: torch.memory_format):
        self.images = torch.from_numpy(images).to(device)
        self.masks = torch.from_numpy(masks).to(device)
        self.plan, self.seed, self.label_nc, self.mem = plan, seed, label_nc, memory_format
        self._epoch, self._order = -1, None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.plan
        epoch, batch = divmod(step, p.steps_per_epoch)
        if epoch != self._epoch:
            order = epoch_order(self.seed, epoch, p.frames)
            self._epoch, self._order = epoch, torch.from_numpy(order).to(self.images.device)
        start = batch * p.batch_size + p.rank * p.local_batch
        idx = self._order[start:start + p.local_batch]
        real = self.images[idx].unsqueeze(1).float().div_(127.5).sub_(1.0)
        seg = one_hot(self.masks[idx], self.label_nc, check=False)
        return seg.contiguous(memory_format=self.mem), real.contiguous(memory_format=self.mem)


# --------------------------------------------------------------------------------------------
# The training state
# --------------------------------------------------------------------------------------------
class TrainingState:
    """Networks, EMA, optimisers, lr schedules, iteration and loss log of one run.

    Built from ``cfg.seed`` (identical on every rank). ``state_dict()`` gives the checkpoint's
    part that belongs to the run's progress; ``load_state_dict()`` restores it, with the lr
    schedule of *this* run's total (more epochs: no longer decaying to zero where it did)."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, plan: Plan,
                 device: torch.device, memory_format: torch.memory_format,
                 losses: LossLogger):
        self.cfg, self.plan, self.losses = cfg, plan, losses
        torch.manual_seed(cfg.seed)
        G, D, E = build_models(model_cfg)
        self.ema = copy.deepcopy(G).eval().requires_grad_(False)
        if plan.world > 1 and "batch" in (model_cfg.norm_G, model_cfg.norm_D):
            if device.type == "cuda":  # the paper's synchronised batch norm
                G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
                D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
            elif plan.rank == 0:
                log.warning("batch norm under DDP on the CPU: PyTorch's SyncBatchNorm needs CUDA, "
                            "so each process normalises with its own batch statistics")
        self.G, self.D, self.E = G, D, E
        for m in (G, D, E, self.ema):
            if m is not None:
                m.to(device, memory_format=memory_format)
        g_params = list(G.parameters()) + (list(E.parameters()) if E is not None else [])
        betas = (float(cfg.beta1), float(cfg.beta2))
        self.opt_G = torch.optim.Adam(g_params, lr=cfg.lr_G, betas=betas)
        self.opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_D, betas=betas)
        schedule = functools.partial(lr_factor, total_steps=plan.total_steps,
                                     decay_start=plan.decay_start)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, schedule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, schedule)
        self.step = 0

    # The checkpoint keys this object owns (cardigan.gan.checkpoint.REQUIRED_KEYS has the rest).
    NETWORKS = ("G", "D", "E", "ema")
    OPTIMISERS = ("opt_G", "opt_D", "sched_G", "sched_D")

    def state_dict(self) -> dict[str, Any]:
        out = {k: (getattr(self, k).state_dict() if getattr(self, k) is not None else None)
               for k in self.NETWORKS + self.OPTIMISERS}
        return {**out, "step": self.step, **self.losses.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.NETWORKS + self.OPTIMISERS:
            if getattr(self, k) is not None:
                getattr(self, k).load_state_dict(state[k])
        self.step = int(state["step"])
        for opt, sched in ((self.opt_G, self.sched_G), (self.opt_D, self.sched_D)):
            for group, base in zip(opt.param_groups, sched.base_lrs):
                group["lr"] = base * self.plan.lr(self.step)
            sched._last_lr = [g["lr"] for g in opt.param_groups]
        self.losses.load_state_dict(state)

    def lrs(self) -> tuple[float, float]:
        """The learning rates the next update uses."""
        return self.opt_G.param_groups[0]["lr"], self.opt_D.param_groups[0]["lr"]

    def advance(self, terms: dict[str, torch.Tensor]) -> None:
        """After a train step: lr schedules, EMA, loss log, iteration count."""
        self.sched_G.step()
        self.sched_D.step()
        decay = ema_decay_at(self.step, self.cfg.ema_decay, self.cfg.ema_warmup)
        ema_update(self.ema, self.G, decay)
        self.losses.add(terms)
        self.step += 1

    def modules_to_run(self, *, world: int, device: torch.device, compile_: bool
                       ) -> tuple[nn.Module, nn.Module, nn.Module | None, nn.Module]:
        """(G, D, E, D_frozen) as the train step runs them: DDP for gradient sync across
        processes, torch.compile when asked; D_frozen is the plain D the generator loss uses."""
        G, D, E, D_frozen = self.G, self.D, self.E, self.D
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
            E = DDP(E, device_ids=ids) if E is not None else None
        if compile_:
            G, D, D_frozen = torch.compile(G), torch.compile(D), torch.compile(D_frozen)
            E = torch.compile(E) if E is not None else None
        for m in (G, D, E):
            if m is not None:
                m.train()
        return G, D, E, D_frozen


# --------------------------------------------------------------------------------------------
# Which saved state to continue
# --------------------------------------------------------------------------------------------
def select_state(*, resume: str | Path | None, fp_dir: Path, state_name: str, fp: str,
                 settings: dict, model_cfg: ModelConfig, total_steps: int, epochs: int,
                 rank: int, world: int) -> dict[str, Any] | None:
    """The state to continue from, or None to start afresh.

    Without ``resume``: the state in this fingerprint's folder, if any; one that has trained
    more iterations than this run wants is moved aside to ``<folder>.superseded-it<N>`` (kept,
    never deleted) and training starts again. With ``resume``: that file, refused when it has
    trained more. Refuses (CheckpointError) a corrupt file or one of a different architecture;
    never silently ignores a file. Every rank reads the state before rank 0 moves anything."""
    is_main = rank == 0
    state_dir = fp_dir.parent
    if is_main:
        others = sorted(p.name for p in state_dir.glob("*") if p.is_dir() and p != fp_dir)
        if others:
            log.info("%s also holds states of other settings or data (not used here): %s",
                     state_dir, ", ".join(others))
    path = Path(resume) if resume is not None else fp_dir / state_name
    state = None
    if resume is not None or path.exists():
        state = load_state(path)
        check_model_config(path, state, model_cfg)
        if state["fingerprint"] != fp:
            _other_settings(path, state, settings, explicit=resume is not None, is_main=is_main)
        if resume is not None and int(state["step"]) > total_steps:
            raise CheckpointError(f"training state {path} has trained {state['step']} "
                                  f"iterations, more than the {total_steps} of this run: raise "
                                  f"train.epochs")
    if world > 1:
        dist.barrier()  # every rank has read the state before rank 0 may move it aside
    if state is not None and int(state["step"]) > total_steps:
        if is_main:
            aside = fp_dir.with_name(f"{fp_dir.name}.superseded-it{state['step']}")
            log.warning(
                "the state in %s has trained %d iterations, more than the %d that train.epochs="
                "%d asks for: moved it to %s and training again from the start", fp_dir,
                state["step"], total_steps, epochs, aside)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(fp_dir, aside)
        state = None
    if world > 1:
        dist.barrier()
    return state


def _other_settings(path: Path, state: dict, settings: dict, *, explicit: bool,
                    is_main: bool) -> None:
    saved = state["settings"]
    diff = [f"train.{k}" for k in sorted(set(saved["train"]) | set(settings["train"]))
            if saved["train"].get(k) != settings["train"].get(k)]
    diff += [f"{k}" for k in sorted(set(saved) | set(settings)) - {"train", "model", "data"}
             if saved.get(k) != settings.get(k)]
    if saved["data"] != settings["data"]:
        diff.append("the training data")
    if not explicit:
        raise CheckpointError(
            f"training state {path} belongs to other settings ({', '.join(diff) or '?'}) than "
            f"the folder it is in; move it away or delete it")
    if is_main:
        log.warning("resuming %s although it was trained with other settings: %s differ",
                    path, ", ".join(diff))
