"""Starting a training run: in this process, or under torchrun with one process per GPU (DDP);
``python -m cardigan.gan.launch`` is one such process."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from cardigan.core.defaults import default
from cardigan.gan.processes import resolve_device
from cardigan.gan.train import train
from cardigan.gan.train_config import TrainConfig

log = logging.getLogger("cardigan")


def ddp_command(args_file: str | Path, nproc: int) -> list[str]:
    """The torchrun command line (``python -m torch.distributed.run`` is torchrun) that runs
    :func:`main` in ``nproc`` processes on this node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "cardigan.gan.launch", "--args", str(args_file)]


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
    """``python -m cardigan.gan.launch`` / ``cardigan train``: one process of a (DDP) training run.

    Either ``--args FILE`` (a JSON file as written by :func:`run_training`), or the arguments
    one by one with ``--train-config`` a YAML/JSON file holding the ``train`` section (or a
    whole config with a ``train`` key).
    """
    p = argparse.ArgumentParser(prog="cardigan train", description=main.__doc__)
    p.add_argument("--args", help="JSON file with every argument of cardigan.gan.train.train")
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
