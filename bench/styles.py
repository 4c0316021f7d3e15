"""Inference cost of k styles per mask vs one: time and FLOPs, style encoder included.

    python bench/styles.py --size 256 --ngf 64 --k 4 --threads 2

One style: the VAE encoder encodes one image into z (its mean), the generator draws the mask
with it. k styles: the encoder encodes k images, the generator draws the mask k times. With
``SPADEGenerator.mask_features`` (this code) the mask-only part of every SPADE layer is computed
once per mask and shared by the k styles (``generator(seg, z)`` with k rows of z per mask); a
generator without it (an older cardiGAN on PYTHONPATH) gets the mask repeated k times. FLOPs come
from ``torch.utils.flop_counter`` (independent of machine load); times are the fastest of
``--repeats`` alternating runs. Random weights: speed does not depend on them. On the CPU the
generator's sparse SPADE path (``cardigan.gan.model.MaskSites``) runs, so the FLOPs are those it
does; ``--meta`` counts the dense convolutions' FLOPs (the sparse path is CPU-only).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cardigan.data.masks import BENCH_MASKS, bench_masks
from cardigan.gan.encoder import ConvEncoder
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.layers import one_hot
from cardigan.gan.model_config import ModelConfig


def run(G, E, seg, images, k: int):
    mu, _ = E(images[:k])
    if hasattr(G, "mask_features"):
        return G(seg, mu)  # k rows of z for one mask: mask features computed once
    return G(seg.repeat_interleave(k, 0), mu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--spade-hidden", type=int, default=128)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--masks", choices=BENCH_MASKS, default="heart",
                   help="conditioning mask (cardigan.data.masks.bench_masks; default heart)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="timed runs (0: FLOPs only)")
    p.add_argument("--meta", action="store_true",
                   help="count FLOPs on the meta device (no arithmetic: instant; implies "
                        "--repeats 0)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.meta:
        args.repeats = 0
        torch.set_default_device("meta")
    cfg = ModelConfig(image_size=args.size, ngf=args.ngf, ndf=args.ngf, use_vae=True,
                      spade_hidden=args.spade_hidden)
    G, E = SPADEGenerator(cfg).eval(), ConvEncoder(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    mask = torch.from_numpy(bench_masks(args.masks, 1, args.size)).long()
    if args.meta:  # one_hot checks the values, which meta tensors do not have
        seg = torch.zeros(1, 4, args.size, args.size).scatter_(1, mask[:, None], 1.0)
    else:
        seg = one_hot(mask, 4)
    images = torch.rand(args.k, 1, args.size, args.size, generator=gen) * 2 - 1
    out = {"size": args.size, "ngf": args.ngf, "k": args.k, "threads": args.threads,
           "cached_mask_features": hasattr(G, "mask_features")}
    with torch.no_grad():
        for k in (1, args.k):
            with FlopCounterMode(display=False) as fc:
                run(G, E, seg, images, k)
            out[f"gflop_{k}"] = fc.get_total_flops() / 1e9
        best = {1: float("inf"), args.k: float("inf")}
        for _ in range(args.repeats):
            for k in (1, args.k):
                t0 = time.perf_counter()
                run(G, E, seg, images, k)
                best[k] = min(best[k], time.perf_counter() - t0)
    out["flop_ratio"] = out[f"gflop_{args.k}"] / out["gflop_1"]
    if args.repeats:
        out.update({f"s_{k}": v for k, v in best.items()})
        out["time_ratio"] = best[args.k] / best[1]
    out["target_ratio"] = 1 + 0.5 * (args.k - 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
