"""Device selection shared by every stage that runs a network."""

from __future__ import annotations

import functools

import torch


def resolve_device(device: str, key: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a GPU is an error naming
    the config ``key`` (e.g. ``train.device``)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"config key {key}: cuda requested but no CUDA device is visible "
                               "(use auto or cpu)")
        return torch.device("cuda", local_rank)
    if device != "cpu":
        raise ValueError(f"config key {key}: unknown device {device!r} (auto, cpu or cuda)")
    return torch.device("cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 arithmetic (AVX512-BF16 or AMX), on Linux.

    Only then is bf16 autocast on the CPU faster than fp32 (elsewhere it is emulated and slower).
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_autocast_enabled(device: torch.device, amp: bool) -> bool:
    """Whether ``amp: true`` turns on bf16 autocast on ``device``."""
    return amp and (device.type == "cuda" or cpu_has_native_bf16())
