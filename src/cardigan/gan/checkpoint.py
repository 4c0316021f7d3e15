"""The training-state checkpoint: one file that lets a killed training run resume exactly.

The state holds the generator, discriminator, encoder and EMA weights, both optimisers and lr
schedules, the position in training (step, epoch, batch within the epoch), the RNG states of
Python, NumPy, torch and its CUDA device of every process, and the training history that the
declared outputs are rebuilt from (log rows, loss accumulators). Everything in it is a tensor or a plain
Python value, so it loads with ``torch.load(weights_only=True)``: a checkpoint can never run code.

Writes are atomic (temporary file in the same folder, then ``os.replace``): a job killed while
saving leaves the previous checkpoint intact.

States live in ``state_dir/<fingerprint[:16]>/state.pt``; the fingerprint is the hash of
everything that determines the weights (model config, training settings except the number of
epochs and the logging/checkpoint/sample frequencies, and the training data), so a state is only
ever resumed by a run that would have produced it (see ``cardigan.gan.train``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cardigan.core.atomic import atomic_output
from cardigan.gan.model_config import ModelConfig

STATE_FORMAT = "cardigan-train-state/2"
#: States of earlier layouts (the unfused SPADE generator, all GPUs' RNG states): not resumable.
OLD_STATE_FORMATS = ("cardigan-train-state/1",)
STATE_NAME = "state.pt"


class CheckpointError(RuntimeError):
    """A training-state file is unreadable, not a cardiGAN state, or does not fit this run."""


def fingerprint_dir(state_dir: str | Path, fingerprint: str) -> Path:
    """The folder that holds the state of one training fingerprint."""
    return Path(state_dir) / fingerprint[:16]


# --------------------------------------------------------------------------------------------
# RNG states as tensors / plain values (weights_only-loadable)
# --------------------------------------------------------------------------------------------
def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """The RNG states of this process: Python, NumPy, torch (CPU) and the CUDA device it trains
    on (``device``; by default the current CUDA device when there is one), not every visible GPU,
    so that a state resumes with fewer GPUs visible than when it was saved."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = None
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if device is not None and device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    return {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng(rng: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng`; the CUDA state goes to ``device`` (default: the current
    CUDA device). A state saved on the CPU restores only the CPU streams."""
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    nps = rng["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------
def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training state atomically; tensors are moved to the CPU first."""
    path = Path(path)
    payload = {"format": STATE_FORMAT, **_to_cpu(state)}
    # Through a file object: given a path, torch.save names the archive after the (random)
    # temporary file, and identical weights would no longer give identical bytes.
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``.

    Raises CheckpointError naming the file, and saying how to recover, when it cannot be read or
    is not a cardiGAN training state: a damaged checkpoint never silently restarts training.
    """
    path = Path(path)
    recover = (f"delete it (rm '{path}') to train from the start, or restore it from a backup; "
               f"its progress is lost either way")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"training state {path} does not exist") from None
    except Exception as exc:  # zip / unpickling errors: truncated or foreign file
        raise CheckpointError(
            f"training state {path} is corrupt or not a torch file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); {recover}"
        ) from exc
    if isinstance(state, dict) and state.get("format") in OLD_STATE_FORMATS:
        raise CheckpointError(
            f"training state {path} was written by an older cardiGAN ({state['format']}, "
            f"another generator layout) and cannot be resumed; {recover}")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a cardiGAN training state (format {found!r}, expected "
            f"{STATE_FORMAT!r}); {recover}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"training state {path} lacks {', '.join(missing)}; {recover}")
    return state


REQUIRED_KEYS = (
    "fingerprint", "model_config", "settings", "step", "epoch", "batch_in_epoch",
    "steps_per_epoch", "world_size", "G", "D", "E", "ema", "opt_G", "opt_D", "sched_G",
    "sched_D", "rng", "log_rows", "throughput_rows", "log_acc",
)


def check_model_config(path: str | Path, state: dict[str, Any], cfg: ModelConfig) -> None:
    """Refuse a state whose architecture or label count differs from ``cfg``, naming the
    settings (``train.<name>`` / ``data.image_size``) and both values."""
    try:
        saved = ModelConfig.from_dict(dict(state["model_config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"training state {path}: unreadable model config ({exc})") from exc
    diff = saved.diff(cfg)
    if diff:
        parts = [f"{_config_key(k)}: checkpoint {a!r}, config {b!r}" for k, (a, b) in diff.items()]
        raise CheckpointError(
            f"training state {path} was trained with a different model ({'; '.join(parts)}); "
            f"it cannot be loaded into this architecture. Set those values back to resume it, "
            f"or point elsewhere / delete it to train from the start"
        )


def _config_key(model_field: str) -> str:
    return "data.image_size" if model_field == "image_size" else f"train.{model_field}"


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
