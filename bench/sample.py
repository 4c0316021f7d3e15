"""Sampling benchmark: images/s and peak RSS of the sample stage for 1,000 and 10,000 images.

    python bench/sample.py                 # CPU (and CUDA when available), 1,000 and 10,000
    python bench/sample.py --counts 1000 --threads 2

The generator is built from config.yaml's ``train`` section at ``data.image_size`` (128 by
default) with RANDOM weights: speed does not depend on the weights. Conditioning masks are 100
toy apical masks (``cardigan.data.masks.toy_heart_mask``); the image count is reached with
``sample.augment.n`` deformations per mask (count / 100 - 1), so the run includes augmentation,
plausibility checks, inference, the real grey levels and speckle (recorded from toy "training
images"; with ``train.background_classes`` the toy images' background bank too) and HDF5
writing, i.e. the whole sample stage. Each run is a
separate process, so its peak RSS (ru_maxrss) is its own; peak memory must not grow with the
number of images (within 20 %).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_SOURCES = 100


def worker(count: int, device: str, threads: int, batch_size: int) -> dict:
    import h5py
    import numpy as np
    import torch
    import yaml

    from cardigan.data.masks import toy_heart_mask
    from cardigan.gan.appearance import Appearance
    from cardigan.gan.background import BackgroundBank, condition_maps
    from cardigan.gan.generator_file import save_generator
    from cardigan.gan.model import build_models
    from cardigan.gan.model_config import ModelConfig
    from cardigan.synth.sample import run_sample

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    size = config["data"]["image_size"]
    torch.manual_seed(0)
    cfg = ModelConfig.from_train_config(config["train"], size)
    with tempfile.TemporaryDirectory(prefix="cardigan_bench_") as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        masks = [toy_heart_mask(size, rng) for _ in range(N_SOURCES)]
        with h5py.File(d / "anno_train_4CH.h5", "w") as f:
            for i, mask in enumerate(masks):
                ds = f.create_dataset(f"patient{i // 2 + 1:04d}_4CH_gt_channel{i % 2}", data=mask)
                ds.attrs["spacing"] = [0.15 * 843 / size, 0.3 * 512 / size]
        # "training images" for the grey-level and speckle records that sampling imposes
        images = np.clip(np.array([30, 60, 170, 60])[np.stack(masks)] + 25
                         + rng.normal(0, 20, (N_SOURCES, size, size)), 0, 255).astype(np.uint8)
        ids = [f"patient{i // 2 + 1:04d}_4CH_{('ED', 'ES')[i % 2]}" for i in range(N_SOURCES)]
        extra = Appearance.measure(images, ids).to_extra()
        if cfg.background_classes:  # the background bank, as training stores it
            maps = condition_maps(images, np.stack(masks), cfg.background_classes, cfg.label_nc)
            extra.update(BackgroundBank.build(maps, ids, cfg.label_nc).to_extra())
        save_generator(d / "g.pt", build_models(cfg)[0], cfg, extra)
        sample = dict(config["sample"], device=device, batch_size=batch_size, samples_per_mask=1,
                      mask_path=None)
        sample["augment"] = dict(config["sample"]["augment"], n=max(0, count // N_SOURCES - 1))
        summary = run_sample(d / "g.pt", [d / "anno_train_4CH.h5"], [d / "anno_train_4CH.h5"],
                             sample, d / "samples.h5", threads=threads)
        summary["file_mb"] = (d / "samples.h5").stat().st_size / 2**20
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        summary["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    summary["model"] = cfg.to_dict()
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: config sample.batch_size")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda if present")
    p.add_argument("--worker", nargs=2, metavar=("COUNT", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch_size is None:
        import yaml
        args.batch_size = yaml.safe_load((ROOT / "config.yaml").read_text())["sample"]["batch_size"]
    if args.worker:
        out = worker(int(args.worker[0]), args.worker[1], args.threads, args.batch_size)
        print("RESULT " + json.dumps(out))
        return
    devices = args.devices
    if devices is None:
        import torch
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        rss = []
        for count in args.counts:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", str(count), device, "--threads",
                 str(args.threads), "--batch-size", str(args.batch_size)],
                capture_output=True, text=True, check=True)
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            r = json.loads(line[len("RESULT "):])
            rss.append(r["peak_rss_mb"])
            extra = f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""
            print(f"{device:4s} {r['images']:6d} images at {r['model']['image_size']} px "
                  f"(ngf {r['model']['ngf']}, batch {args.batch_size}, threads {args.threads}): "
                  f"{r['images_per_s']:7.1f} images/s, {r['seconds']:7.1f} s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB{extra}, file {r['file_mb']:.1f} MB; deformation "
                  f"draws rejected {sum(r['rejected'].values())}, given up {r['exhausted']}",
                  flush=True)
        if len(rss) > 1:
            growth = max(rss) / min(rss) - 1
            verdict = "flat" if growth <= 0.20 else "NOT flat"
            print(f"{device}: peak RSS grows {100 * growth:.1f} % from {args.counts[0]} to "
                  f"{args.counts[-1]} images ({verdict}; limit 20 %)", flush=True)


if __name__ == "__main__":
    main()
