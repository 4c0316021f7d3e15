"""The largest training batch that fits on the device (bf16 + channels-last on CUDA).

    python bench/max_batch.py --size 256 --ngf 64 --spade-hidden 128 --start 16

Runs two iterations of the training loop's iteration (bench/train_step.py's ``Iteration``) at
doubling batch sizes until one runs out of memory, then bisects; prints each trial as it goes
(batch, ok / out of memory, peak memory) and finally the largest batch that fit. On the CPU
(smoke mode) it stops at ``--cpu-limit``.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import Iteration, optimised_settings, train_config  # noqa: E402


def fits(args: argparse.Namespace, batch: int, device: torch.device) -> tuple[bool, float]:
    ns = argparse.Namespace(**{**vars(args), "batch": batch})
    settings = optimised_settings(device, compile_=False)
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    it = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        it = Iteration(train_config(ns, settings), args.size, device)
        for _ in range(2):
            it.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        return True, peak
    except torch.cuda.OutOfMemoryError:
        return False, float("nan")
    finally:
        del it
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--spade-hidden", type=int, default=128)
    p.add_argument("--n-layers-D", type=int, default=4)
    p.add_argument("--start", type=int, default=16)
    p.add_argument("--cpu-limit", type=int, default=4)
    args = p.parse_args()
    args.ndf, args.num_D, args.label_nc, args.vae, args.z_dim = args.ngf, 2, 4, False, 256
    args.num_upsampling_layers, args.diffaug, args.discriminator = "normal", "", "patchgan"
    args.background_classes, args.l1_balance = 0, None  # None: the schema's L1 balance
    device = torch.device(args.device)
    limit = args.cpu_limit if device.type == "cpu" else 1 << 16
    good, bad, batch = 0, None, args.start
    while (bad is None or bad - good > max(1, good // 16)) and batch > 0:
        ok, peak = fits(args, batch, device)
        print(f"batch {batch:5d}: {'fits' if ok else 'out of memory'}"
              + (f", peak {peak:.1f} GiB" if ok and device.type == "cuda" else ""), flush=True)
        if ok:
            good = batch
            if batch >= limit:
                break
        else:
            bad = batch
        batch = batch * 2 if bad is None else (good + bad) // 2
    total = (torch.cuda.get_device_properties(device).total_memory / 2**30
             if device.type == "cuda" else 0)
    print(f"largest batch that fits: {good} (size {args.size}, ngf/ndf {args.ngf}, SPADE hidden "
          f"{args.spade_hidden}, bf16 + channels-last; device memory {total:.0f} GiB)")


if __name__ == "__main__":
    main()
