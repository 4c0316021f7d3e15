"""The processes of a training run: the device, torchrun's environment, torch's settings while
training, and gathering from every process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from cardigan.core.device import resolve_device as _resolve_device


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    return _resolve_device(device, "train.device", local_rank)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment variables."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def torch_settings(device: torch.device, threads: int | None) -> Iterator[None]:
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


def all_gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out
