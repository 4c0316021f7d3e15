"""This checkout against another one (e.g. an older commit), interleaved in one process.

    git worktree add /tmp/old cd8ac62
    python bench/compare_commits.py --old-src /tmp/old/src --size 128 --ngf 16 --batch 4

On a shared machine the load changes between runs of separate processes; here the two versions
take turns iteration by iteration (old, new, old, new, ...) in one process, so both see the same
load, and the median and fastest of each are printed with their ratio. The other checkout's
``cardigan`` package is copied to a temporary folder as ``cardigan_old``. Modes: ``train`` (one
training iteration: G step through a frozen D, then the D step on the same fake, default Adam,
fp32 or ``--amp`` bf16 autocast — the models and losses of each version) and ``infer`` (the
generator's forward for one style, no grad).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

from cardigan.data.masks import BENCH_MASKS, bench_masks


def import_old(src: Path, dest: Path):
    pkg = dest / "cardigan_old"
    shutil.copytree(src / "cardigan", pkg)
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        f.write_text(re.sub(r"\b(from|import) cardigan\b", r"\1 cardigan_old", text))
    sys.path.insert(0, str(dest))
    return api("cardigan_old")


def api(pkg: str) -> tuple[SimpleNamespace, ModuleType]:
    """(ModelConfig, build_models, one_hot) and the losses module of a cardigan package, laid out
    by stage (``gan/``) or flat as before."""
    mod = importlib.import_module
    if importlib.util.find_spec(f"{pkg}.gan") is None:
        model = mod(f"{pkg}.model")
        return (SimpleNamespace(ModelConfig=model.ModelConfig, build_models=model.build_models,
                                one_hot=model.one_hot), mod(f"{pkg}.losses"))
    return (SimpleNamespace(ModelConfig=mod(f"{pkg}.gan.model_config").ModelConfig,
                            build_models=mod(f"{pkg}.gan.model").build_models,
                            one_hot=mod(f"{pkg}.gan.layers").one_hot), mod(f"{pkg}.gan.losses"))


class Version:
    def __init__(self, model, losses, args, device):
        self.model, self.losses, self.args = model, losses, args
        cfg = model.ModelConfig(image_size=args.size, ngf=args.ngf, ndf=args.ngf,
                                spade_hidden=args.spade_hidden, n_layers_D=args.n_layers_D,
                                use_vae=args.mode == "infer")
        torch.manual_seed(0)
        self.G, self.D, _ = model.build_models(cfg)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=1e-4, betas=(0.0, 0.9))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=4e-4, betas=(0.0, 0.9))
        gen = torch.Generator().manual_seed(0)
        mask = torch.from_numpy(bench_masks(args.masks, args.batch, args.size)).long()
        self.seg = model.one_hot(mask, 4).to(device)
        self.real = (torch.rand(args.batch, 1, args.size, args.size, generator=gen) * 2 - 1).to(
            device)
        self.z = torch.randn(args.batch, cfg.z_dim, generator=gen).to(device)
        if args.mode == "infer":
            self.G.eval()

    def step(self):
        ac = (torch.autocast(self.seg.device.type, dtype=torch.bfloat16) if self.args.amp
              else torch.autocast(self.seg.device.type, enabled=False))
        if self.args.mode == "infer":
            with torch.no_grad(), ac:
                return self.G(self.seg, self.z)
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        with ac:
            g, _, fake = self.losses.generator_losses(self.G, self.D, self.seg, self.real)
        g.backward()
        self.opt_G.step()
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with ac:
            d, _ = self.losses.discriminator_losses(self.D, self.seg, fake.detach(), self.real)
        d.backward()
        self.opt_D.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-src", required=True, type=Path)
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--spade-hidden", type=int, default=128)
    p.add_argument("--n-layers-D", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=5, help="timed iterations of each version")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (default: fp32)")
    p.add_argument("--masks", choices=BENCH_MASKS, default="heart",
                   help="conditioning masks (cardigan.data.masks.bench_masks)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    new_model, new_losses = api("cardigan")

    with tempfile.TemporaryDirectory() as tmp:
        old_model, old_losses = import_old(args.old_src, Path(tmp))
        versions = {"old": Version(old_model, old_losses, args, device),
                    "new": Version(new_model, new_losses, args, device)}
        times: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(args.warmup + args.iters):
            for name, v in versions.items():
                t0 = time.perf_counter()
                v.step()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    print(f"mode={args.mode} size={args.size} ngf=ndf={args.ngf} spade_hidden={args.spade_hidden}"
          f" n_layers_D={args.n_layers_D} batch={args.batch} threads={args.threads} "
          f"amp={args.amp} masks={args.masks} iters={args.iters} torch={torch.__version__}")
    for name, t in times.items():
        print(f"{name}: median {statistics.median(t):.3f} s  fastest {min(t):.3f} s  "
              f"all {' '.join(f'{x:.2f}' for x in t)}")
    print(f"speed-up new/old: median {statistics.median(times['old']) / statistics.median(times['new']):.2f}x"
          f"  fastest {min(times['old']) / min(times['new']):.2f}x")


if __name__ == "__main__":
    main()
