"""generator.pt: the EMA generator's weights, its ModelConfig and what sampling needs (``extra``),
written and read here; older layouts are converted on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cardigan.core.atomic import atomic_output
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.model_config import ModelConfig

GENERATOR_FORMAT = "cardigan-generator/2"
#: Older generator files that load_generator still reads (converted on load).
LEGACY_GENERATOR_FORMATS = ("cardigan-generator/1",)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and/or torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def convert_legacy_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A generator state_dict of the unfused SPADE layout (``cardigan-generator/1``: per SPADE
    layer ``shared.0``, ``gamma``, ``beta`` convs and a norm each) in today's fused layout: the
    hidden convs of a block concatenated into ``shared`` (order norm_0, norm_1, norm_s), gamma and
    beta into ``gamma_beta``; the shortcut's norm buffers (batch-norm statistics, identical to
    norm_0's since both normalised the same input) are dropped. Other keys pass unchanged."""
    out: dict[str, torch.Tensor] = {}
    blocks = sorted({k.split(".norm_0.shared.0.")[0] for k in state if ".norm_0.shared.0." in k})
    for k, v in state.items():
        if not any(k.startswith(b + ".norm_") for b in blocks):
            out[k] = v
    for b in blocks:
        layers = [n for n in ("norm_0", "norm_1", "norm_s") if f"{b}.{n}.gamma.weight" in state]
        for part in ("weight", "bias"):
            out[f"{b}.shared.{part}"] = torch.cat([state[f"{b}.{n}.shared.0.{part}"]
                                                   for n in layers])
            for n in layers:
                out[f"{b}.{n}.gamma_beta.{part}"] = torch.cat(
                    [state[f"{b}.{n}.gamma.{part}"], state[f"{b}.{n}.beta.{part}"]])
        for k, v in state.items():
            for n in ("norm_0", "norm_1"):
                if k.startswith(f"{b}.{n}.norm."):
                    out[k] = v
    return out


def save_generator(path, generator: nn.Module, cfg: ModelConfig, extra: dict | None = None) -> None:
    """Write the generator weights and its ModelConfig atomically (tmp file + os.replace).

    Tensors are stored on the CPU; ``extra`` must hold only primitives/tensors so that the file
    loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in unwrap(generator).state_dict().items()}
    payload = {"format": GENERATOR_FORMAT, "model_config": cfg.to_dict(),
               "state_dict": state, "extra": dict(extra or {})}
    # Through a file object: given a path, torch.save names the archive after the (random)
    # temporary file, and identical weights would no longer give identical bytes.
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def load_generator(path, map_location: Any = "cpu") -> tuple[SPADEGenerator, ModelConfig, dict]:
    """Rebuild a generator saved by ``save_generator``; returns ``(generator.eval(), cfg, extra)``.

    Does not disturb torch's global RNG. Raises FileNotFoundError / ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors: the file is corrupt or not a torch file
        raise ValueError(f"{path} is not a readable cardiGAN generator file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") not in (GENERATOR_FORMAT,
                                                                       *LEGACY_GENERATOR_FORMATS):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not a cardiGAN generator file (format {found!r}, "
            f"expected {GENERATOR_FORMAT!r})"
        )
    try:
        cfg = ModelConfig.from_dict(payload["model_config"])
        with torch.random.fork_rng(devices=[]):  # building draws from the RNG: keep the caller's
            generator = SPADEGenerator(cfg)
        weights = payload["state_dict"]
        if payload["format"] in LEGACY_GENERATOR_FORMATS:
            weights = convert_legacy_state_dict(weights)
        generator.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is a corrupt cardiGAN generator file: {exc}") from exc
    if map_location is not None:
        generator.to(map_location)
    return generator.eval(), cfg, dict(payload.get("extra", {}))
