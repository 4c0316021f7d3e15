"""Benchmark one full SPADE training iteration (G step + D step): optimised path vs plain fp32.

    python bench/train_step.py --size 64 --ngf 16 --ndf 16 --batch 4            # CPU here
    python bench/train_step.py --size 256 --ngf 64 --ndf 64 --batch 16 --compile  # on a GPU

Each path runs in its own subprocess (``--repeats`` alternating runs, best kept), so peak memory (CUDA: max_memory_allocated; CPU: peak RSS
of the process) belongs to that path alone. The iteration is ``train_iteration`` below, built on
``cardigan.losses.generator_losses`` / ``discriminator_losses`` exactly as the training loop.

Optimised path:
- CUDA: bf16 autocast, channels-last models and inputs, cuDNN autotune, fused Adam, and with
  ``--compile`` torch.compile of G and D.
- CPU: NCHW, bf16 autocast only when the CPU has native bf16 (AVX512-BF16 / AMX; otherwise
  bf16 is emulated and slower than fp32), plus ``--compile`` if asked. Measured on the 2-core
  development machine (docs/notes/model.md): bf16 ~1.4x faster there, channels-last no faster
  than NCHW in fp32 or bf16, so channels-last is not used on the CPU.
Plain path: fp32, NCHW, no autotune, default Adam, no compile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cardigan.device import cpu_has_native_bf16
from cardigan.losses import discriminator_losses, generator_losses
from cardigan.model import ModelConfig, build_models, one_hot


@dataclass(frozen=True)
class PathSettings:
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    cudnn_benchmark: bool = False
    fused_adam: bool = False
    compile: bool = False


def optimised_settings(device: torch.device, compile_: bool) -> PathSettings:
    if device.type == "cuda":
        return PathSettings(amp=True, channels_last=True, cudnn_benchmark=True, fused_adam=True,
                            compile=compile_)
    return PathSettings(amp=cpu_has_native_bf16(), compile=compile_)


def train_iteration(
    generator: nn.Module,
    discriminator: nn.Module,
    encoder: nn.Module | None,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    seg: torch.Tensor,
    real: torch.Tensor,
    *,
    amp: bool = False,
    lambda_feat: float = 10.0,
    lambda_kld: float = 0.05,
    vgg: nn.Module | None = None,
    lambda_vgg: float = 10.0,
) -> dict[str, torch.Tensor]:
    """One SPADE iteration, the same as ``cardigan.train.train_step``: a G (+E) step (hinge +
    feature matching [+ KL, VGG], D run on concat(fake, real) with its weights frozen so no D
    weight gradients are computed), then a D step on the same fake, detached. (The reference
    regenerates the fake after the G update; reusing it saves a generator forward.)
    Returns the detached loss terms (no device sync here)."""
    autocast = (
        torch.autocast(device_type=seg.device.type, dtype=torch.bfloat16)
        if amp else contextlib.nullcontext()
    )
    discriminator.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with autocast:
        g_total, terms, fake = generator_losses(
            generator, discriminator, seg, real, encoder=encoder, vgg=vgg,
            lambda_feat=lambda_feat, lambda_kld=lambda_kld, lambda_vgg=lambda_vgg,
        )
    g_total.backward()
    opt_G.step()
    discriminator.requires_grad_(True)

    opt_D.zero_grad(set_to_none=True)
    with autocast:
        d_total, d_terms = discriminator_losses(discriminator, seg, fake.detach(), real)
    d_total.backward()
    opt_D.step()
    terms.update(d_terms)
    return {k: v.detach() for k, v in terms.items()}


def synthetic_batch(cfg: ModelConfig, batch: int, device: torch.device, seed: int = 0):
    """Random masks (blocky, so SPADE sees regions) and images in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, cfg.label_nc, (batch, 1, 8, 8), generator=gen)
    mask = nn.functional.interpolate(coarse.float(), size=cfg.image_size, mode="nearest").long()
    real = torch.rand(batch, 1, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    return one_hot(mask, cfg.label_nc).to(device), real.to(device)


def run_path(args: argparse.Namespace, settings: PathSettings) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    cfg = ModelConfig(label_nc=args.label_nc, image_size=args.size, ngf=args.ngf, ndf=args.ndf,
                      spade_hidden=args.spade_hidden, num_D=args.num_D,
                      n_layers_D=args.n_layers_D, use_vae=args.vae, z_dim=args.z_dim,
                      num_upsampling_layers=args.num_upsampling_layers)
    G, D, E = build_models(cfg)
    mem_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    models = [m for m in (G, D, E) if m is not None]
    for m in models:
        m.to(device, memory_format=mem_format).train()
    adam = {"betas": (0.0, 0.9)}
    if settings.fused_adam:
        adam["fused"] = True
    opt_G = torch.optim.Adam([p for m in (G, E) if m is not None for p in m.parameters()],
                             lr=1e-4, **adam)
    opt_D = torch.optim.Adam(D.parameters(), lr=4e-4, **adam)
    if settings.compile:
        G, D = torch.compile(G), torch.compile(D)
        E = torch.compile(E) if E is not None else None
    seg, real = synthetic_batch(cfg, args.batch, device)
    seg = seg.contiguous(memory_format=mem_format)
    real = real.contiguous(memory_format=mem_format)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        train_iteration(G, D, E, opt_G, opt_D, seg, real, amp=settings.amp)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        terms = train_iteration(G, D, E, opt_G, opt_D, seg, real, amp=settings.amp)
    sync()
    seconds = time.perf_counter() - start
    if not all(torch.isfinite(v).item() for v in terms.values()):
        raise RuntimeError(f"non-finite losses: {terms}")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        peak_kind = "max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        peak_kind = "peak RSS"
    return {"settings": asdict(settings), "images_per_s": args.batch * args.iters / seconds,
            "s_per_iter": seconds / args.iters, "peak_bytes": peak, "peak_kind": peak_kind}


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
    p.add_argument("--spade-hidden", type=int, default=128)
    p.add_argument("--num-D", type=int, default=2)
    p.add_argument("--n-layers-D", type=int, default=4)
    p.add_argument("--num-upsampling-layers", default="normal", choices=["normal", "more", "most"])
    p.add_argument("--vae", action="store_true", help="also train the VAE encoder (KL term)")
    p.add_argument("--z-dim", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D (optimised path)")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternating runs of each path, fastest kept (use 3 on a busy machine)")
    p.add_argument("--only", choices=["optimised", "plain"], help=argparse.SUPPRESS)
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
        settings = (optimised_settings(device, args.compile) if args.only == "optimised"
                    else PathSettings())
        print(json.dumps(run_path(args, settings)))
        return

    argv = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, dict] = {}
    for _ in range(args.repeats):  # alternate the paths; keep each one's fastest run
        for name in ("plain", "optimised"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--only", name],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if name not in results or r["images_per_s"] > results[name]["images_per_s"]:
                results[name] = r
    print(f"device={args.device} size={args.size} ngf={args.ngf} ndf={args.ndf} "
          f"batch={args.batch} spade_hidden={args.spade_hidden} num_D={args.num_D} "
          f"n_layers_D={args.n_layers_D} vae={args.vae} threads={torch.get_num_threads()} "
          f"iters={args.iters} repeats={args.repeats} torch={torch.__version__}")
    for name, r in results.items():
        on = [k for k, v in r["settings"].items() if v] or ["fp32 NCHW"]
        print(f"{name:>9}: {r['images_per_s']:8.2f} images/s  {r['s_per_iter'] * 1000:8.1f} ms/iter"
              f"  peak {r['peak_bytes'] / 2**20:8.1f} MiB ({r['peak_kind']})  [{', '.join(on)}]")
    speedup = results["optimised"]["images_per_s"] / results["plain"]["images_per_s"]
    print(f"  speed-up: {speedup:.2f}x")


if __name__ == "__main__":
    main()
