"""DDP on the CPU: 2 processes with the gloo backend, the way torchrun runs the training."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from train_fixtures import write_split

from cardigan.gan.checkpoint import load_state
from cardigan.gan.launch import ddp_command, run_training
from cardigan.gan.model import build_models
from cardigan.gan.outputs import OUTPUTS
from cardigan.gan.train import train
from cardigan.gan.train_config import TrainConfig

TINY = dict(epochs=2, batch_size=4, ngf=4, ndf=4, spade_hidden=8, num_D=2, n_layers_D=2,
            log_every=1, checkpoint_every=2, sample_every=1, gpus=2, device="cpu",
            use_vae=False, texture_noise=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, images: str, annos: str,
            cfg: dict) -> None:
    # What torchrun sets for every process it starts.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out = Path(root) / "out"
    res = train(images_h5=[images], annos_h5=[annos], out_dir=out, state_dir=out / "state",
                cfg=TrainConfig.from_dict(cfg), image_size=64, threads=1, progress=False)
    # The test (not the library) dumps each rank's final weights for comparison.
    torch.save({"G": res.generator.state_dict(), "D": res.discriminator.state_dict(),
                "E": res.encoder.state_dict() if res.encoder is not None else None,
                "ema": res.ema.state_dict(), "step": res.step},
               Path(root) / f"rank{rank}.pt")


def _spawn(tmp_path: Path, cfg: dict) -> list[dict]:
    images, annos = write_split(tmp_path / "data", patients=6, size=64)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), str(images), str(annos), cfg),
             nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_gloo_two_processes(tmp_path):
    ranks = _spawn(tmp_path, {**TINY, "use_vae": True, "z_dim": 8})
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    for part in ("G", "D", "E", "ema"):
        _assert_equal(ranks[0][part], ranks[1][part])
    # gradients were synchronised: the weights moved, identically on both ranks
    state = load_state(next((tmp_path / "out" / "state").glob("*/state.pt")))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    _assert_equal(state["G"], ranks[0]["G"])
    torch.manual_seed(0)
    initial, _, _ = build_models(TrainConfig.from_dict({**TINY, "use_vae": True, "z_dim": 8})
                                 .model_config(64))
    assert any(not torch.equal(v, ranks[1]["G"][k]) for k, v in initial.state_dict().items())
    # only rank 0 wrote the outputs (one set, complete)
    out = tmp_path / "out"
    for name in OUTPUTS.values():
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_0001.png",
                                                                 "epoch_0002.png"]
    lines = (out / "train_log.csv").read_text().splitlines()
    assert len(lines) == 7  # header + one row per iteration, not one per rank


def test_ddp_command_is_torchrun():
    cmd = ddp_command("/tmp/args.json", 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=4" in cmd
    assert cmd[-4:] == ["-m", "cardigan.gan.launch", "--args", "/tmp/args.json"]


def test_run_training_launches_torchrun(tmp_path, caplog):
    """The workflow's path: run_training -> torchrun -> python -m cardigan.gan.launch, 2 processes."""
    images, annos = write_split(tmp_path / "data", patients=4, size=64)
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="cardigan"):
        run_training(images_h5=[images], annos_h5=[annos], out_dir=out, state_dir=out / "state",
                     cfg=TrainConfig.from_dict({**TINY, "epochs": 1}), image_size=64, threads=2)
    assert "torch.distributed.run --standalone --nproc_per_node=2" in caplog.text
    assert "[rank 0] INFO training done: 2 iterations" in caplog.text
    for name in OUTPUTS.values():
        assert (out / name).exists(), name
    assert not list((out / "state").glob(".torchrun-*"))  # the arguments file is cleaned up


def test_ddp_r1_penalty_is_reduced_across_ranks(tmp_path):
    """The R1 penalty runs through the unwrapped discriminator; its gradient (different on each
    rank's slice of the batch) must still be all-reduced, or the ranks' weights drift apart."""
    ranks = _spawn(tmp_path, {**TINY, "r1_gamma": 1.0, "r1_every": 2})
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    for part in ("G", "D", "ema"):
        _assert_equal(ranks[0][part], ranks[1][part])
    rows = (tmp_path / "out" / "train_log.csv").read_text().splitlines()
    r1 = [float(r.split(",")[rows[0].split(",").index("d_r1")]) for r in rows[1:]]
    assert [v > 0 for v in r1] == [True, False] * 3
