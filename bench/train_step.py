"""Benchmark one training iteration of the real loop (G step + D step, lr schedules, EMA):
optimised path vs plain fp32.

    python bench/train_step.py --size 64 --ngf 16 --ndf 16 --batch 4            # CPU here
    python bench/train_step.py --size 256 --ngf 64 --ndf 64 --batch 16 --compile  # on a GPU

Each path runs in its own subprocess (``--repeats`` alternating runs, best kept), so peak memory
(CUDA: max_memory_allocated; CPU: peak RSS of the process) belongs to that path alone. The
iteration is the training loop's own: ``cardigan.gan.train.train_step`` on the networks, optimisers
and schedules of a ``cardigan.gan.state.TrainingState``, then ``TrainingState.advance`` (lr
schedules, EMA update, loss accumulation), on one fixed synthetic batch. Every setting a path
turns on is a ``train`` config key, so training can use it too.

Optimised path:
- CUDA: bf16 autocast (``amp``), channels-last (``channels_last``), cuDNN autotune (always on
  in training on CUDA), and with ``--compile`` torch.compile (``compile``).
- CPU: NCHW, bf16 autocast only when the CPU has native bf16 (AVX512-BF16 / AMX; otherwise bf16
  is emulated and slower than fp32), plus ``--compile`` if asked.
Plain path: fp32, NCHW, no autotune, no compile (on CUDA also with TF32 off).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from cardigan.core.config import validate
from cardigan.core.device import cpu_has_native_bf16
from cardigan.data.masks import BENCH_MASKS, bench_masks
from cardigan.gan.background import condition_maps
from cardigan.gan.layers import one_hot
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.state import Plan, TrainingState
from cardigan.gan.train import _autocast, loss_columns, train_step
from cardigan.gan.train_config import TrainConfig
from cardigan.gan.train_log import LossLogger


@dataclass(frozen=True)
class PathSettings:
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False


def optimised_settings(device: torch.device, compile_: bool) -> PathSettings:
    if device.type == "cuda":
        return PathSettings(amp=True, channels_last=True, cudnn_benchmark=True, compile=compile_)
    return PathSettings(amp=cpu_has_native_bf16(), compile=compile_)


def path_settings(name: str, device: torch.device, compile_: bool) -> PathSettings:
    """plain: fp32 NCHW; bf16: bf16 autocast, NCHW (to choose the layout per device);
    optimised: see the module docstring."""
    if name == "plain":
        return PathSettings()
    if name == "bf16":
        return PathSettings(amp=True, cudnn_benchmark=device.type == "cuda", compile=compile_)
    return optimised_settings(device, compile_)


#: Dense bf16 tensor-core peaks (TFLOP/s, datasheet, without sparsity) for the MFU figure, by
#: a part of the name CUDA reports; the first match counts (the SXM H100 reports itself as
#: "H100 80GB HBM3").
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "RTX 4090": 165.0, "RTX 6000 Ada": 364.0}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def train_config(args: argparse.Namespace, settings: PathSettings) -> TrainConfig:
    """The schema's defaults with the benchmark's architecture and path settings."""
    train = validate({})["train"]
    train.update(ngf=args.ngf, ndf=args.ndf, spade_hidden=args.spade_hidden, num_D=args.num_D,
                 n_layers_D=args.n_layers_D, label_nc=args.label_nc, use_vae=args.vae,
                 z_dim=args.z_dim, num_upsampling_layers=args.num_upsampling_layers,
                 batch_size=args.batch, amp=settings.amp, channels_last=settings.channels_last,
                 compile=settings.compile, device=args.device.split(":")[0],
                 diffaug=args.diffaug, discriminator=args.discriminator,
                 background_classes=args.background_classes)
    if args.l1_balance is not None:
        train["l1_balance"] = args.l1_balance
    return TrainConfig.from_dict(train)


class Iteration:
    """The training loop's iteration on a fixed batch: ``step()`` runs one."""

    def __init__(self, cfg: TrainConfig, image_size: int, device: torch.device,
                 masks: str = "heart"):
        mem = torch.channels_last if cfg.channels_last else torch.contiguous_format
        plan = Plan(frames=cfg.batch_size, batch_size=cfg.batch_size, epochs=10**6)
        losses = LossLogger(loss_columns(cfg), log_every=10**9, device=device, world=1,
                            is_main=False, epochs=plan.epochs, batch_size=cfg.batch_size)
        self.cfg, self.state = cfg, TrainingState(cfg, cfg.model_config(image_size), plan, device,
                                                  mem, losses)
        self.G, self.D, self.E, self.D_frozen = self.state.modules_to_run(
            world=1, device=device, compile_=cfg.compile)
        self.autocast = functools.partial(_autocast, device.type, cfg.amp)
        seg, real = synthetic_batch(cfg.model_config(image_size), cfg.batch_size, device, masks)
        self.seg = seg.contiguous(memory_format=mem)
        self.real = real.contiguous(memory_format=mem)

    def step(self) -> dict[str, torch.Tensor]:
        s = self.state
        terms = train_step(G=self.G, D=self.D, D_frozen=self.D_frozen, E=self.E, vgg=None,
                           opt_G=s.opt_G, opt_D=s.opt_D, seg=self.seg, real=self.real,
                           cfg=self.cfg, autocast=self.autocast)
        s.advance(terms)
        return terms


def synthetic_batch(cfg: ModelConfig, batch: int, device: torch.device, masks: str = "heart",
                    seed: int = 0):
    """Masks of ``cardigan.data.masks.bench_masks`` and random images in [-1, 1]; with
    background classes, the condition maps training builds from them."""
    gen = torch.Generator().manual_seed(seed)
    mask = bench_masks(masks, batch, cfg.image_size, seed)
    real = torch.rand(batch, 1, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    images = ((real[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    cond = condition_maps(images, mask, cfg.background_classes, cfg.label_nc)
    return one_hot(torch.from_numpy(cond).long(), cfg.cond_nc).to(device), real.to(device)


def run_path(args: argparse.Namespace, settings: PathSettings) -> dict:
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    if device.type == "cuda" and not settings.amp:  # the plain path: true fp32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    cfg = train_config(args, settings)
    it = Iteration(cfg, args.size, device, args.masks)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    flops = None
    if args.flops:  # one extra, uncompiled-count iteration: FLOPs do not depend on the path
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            it.step()
        flops = counter.get_total_flops()
    for _ in range(args.warmup):
        it.step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        terms = it.step()
    sync()
    seconds = time.perf_counter() - start
    top_kernels = profile_top_kernels(it, device, args.profile) if args.profile else None
    if not all(torch.isfinite(v).item() for v in terms.values()):  # once, after timing
        raise RuntimeError(f"non-finite losses: {terms}")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        peak_kind = "max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        peak_kind = "peak RSS"
    out = {"settings": asdict(settings), "images_per_s": args.batch * args.iters / seconds,
           "s_per_iter": seconds / args.iters, "peak_bytes": peak, "peak_kind": peak_kind,
           "flops_per_iter": flops, "top_kernels": top_kernels}
    peak_tflops = args.peak_tflops or device_peak_tflops(device)
    if flops and peak_tflops:
        out["mfu"] = flops / out["s_per_iter"] / (peak_tflops * 1e12)
        out["peak_tflops"] = peak_tflops
    return out


def profile_top_kernels(it: Iteration, device: torch.device, n: int) -> list[list]:
    """The ``n`` kernels (CUDA) or operators (CPU) taking most time over 3 iterations."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            it.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    return [[e.key[:80], round(getattr(e, key) / 3e3, 3), round(getattr(e, key) / total, 4)]
            for e in events[:n]]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--ndf", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--iters", type=int, default=10, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--label-nc", type=int, default=4)
    p.add_argument("--background-classes", type=int, default=0,
                   help="brightness classes of the background to condition on (train.background_classes)")
    p.add_argument("--masks", choices=BENCH_MASKS, default="heart",
                   help="conditioning masks (cardigan.data.masks.bench_masks; default heart)")
    p.add_argument("--l1-balance", action=argparse.BooleanOptionalAction, default=None,
                   help="class-balanced L1 term (train.l1_balance; default: the schema's)")
    p.add_argument("--spade-hidden", type=int, default=128)
    p.add_argument("--num-D", type=int, default=2)
    p.add_argument("--n-layers-D", type=int, default=4)
    p.add_argument("--num-upsampling-layers", default="normal", choices=["normal", "more", "most"])
    p.add_argument("--vae", action="store_true", help="also train the VAE encoder (KL term)")
    p.add_argument("--diffaug", default="",
                   help="train.diffaug: the discriminator's input augmentation (e.g. "
                        "color,translation,cutout; default none)")
    p.add_argument("--discriminator", default="patchgan", choices=["patchgan", "oasis"],
                   help="train.discriminator (oasis: the segmentation discriminator, LabelMix)")
    p.add_argument("--z-dim", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D (optimised path)")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternating runs of each path, fastest kept (use 3 on a busy machine)")
    p.add_argument("--paths", default="plain,optimised",
                   help="comma-separated: plain (fp32 NCHW), bf16 (bf16 NCHW), optimised")
    p.add_argument("--flops", action="store_true",
                   help="count the FLOPs of one iteration (torch.utils.flop_counter) and give the "
                        "model-FLOP utilisation against the device's dense bf16 peak")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device for the MFU (default: from its name)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also list the N kernels taking most time")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--only", choices=["optimised", "plain", "bf16"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:  # child process: run one path, print one JSON line
        device = torch.device(args.device)
        print(json.dumps(run_path(args, path_settings(args.only, device, args.compile))))
        return

    argv = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, dict] = {}
    for _ in range(args.repeats):  # alternate the paths; keep each one's fastest run
        for name in args.paths.split(","):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--only", name],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if name not in results or r["images_per_s"] > results[name]["images_per_s"]:
                results[name] = r
    print(f"device={args.device} size={args.size} ngf={args.ngf} ndf={args.ndf} "
          f"batch={args.batch} spade_hidden={args.spade_hidden} num_D={args.num_D} "
          f"n_layers_D={args.n_layers_D} vae={args.vae} background_classes={args.background_classes} "
          f"threads={torch.get_num_threads()} "
          f"iters={args.iters} repeats={args.repeats} torch={torch.__version__}")
    for name, r in results.items():
        on = [k for k, v in r["settings"].items() if v] or ["fp32 NCHW"]
        mfu = f"  MFU {100 * r['mfu']:.1f} %" if "mfu" in r else ""
        tflop = (f"  {r['flops_per_iter'] / 1e9:.1f} GFLOP/iter" if r.get("flops_per_iter")
                 else "")
        print(f"{name:>9}: {r['images_per_s']:8.2f} images/s  {r['s_per_iter'] * 1000:8.1f} ms/iter"
              f"  peak {r['peak_bytes'] / 2**20:8.1f} MiB ({r['peak_kind']})  [{', '.join(on)}]"
              f"{tflop}{mfu}")
        for k in r.get("top_kernels") or []:
            print(f"           {k[1]:9.3f} ms/iter {100 * k[2]:5.1f} %  {k[0]}")
    if "plain" in results:
        for name in results.keys() - {"plain"}:
            speedup = results[name]["images_per_s"] / results["plain"]["images_per_s"]
            print(f"  speed-up of {name} over plain: {speedup:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
