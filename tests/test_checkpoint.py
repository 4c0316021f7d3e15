"""The training-state file: RNG capture, atomic weights_only save/load, clear refusals."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cardigan.gan.checkpoint import (
    REQUIRED_KEYS,
    STATE_FORMAT,
    CheckpointError,
    capture_rng,
    check_model_config,
    fingerprint_dir,
    load_state,
    restore_rng,
    save_state,
)
from cardigan.gan.model_config import ModelConfig


def _draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(3).tolist(), np.random.randn()


def test_rng_roundtrip_through_a_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's legacy state
    save_state(tmp_path / "s.pt", {"rng": capture_rng()})
    expected = _draws()
    _draws()  # move every stream on
    restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert _draws() == expected


def _minimal_state(cfg: ModelConfig) -> dict:
    state = {k: None for k in REQUIRED_KEYS}
    state.update(fingerprint="ab" * 32, model_config=cfg.to_dict(), step=3,
                 G={"w": torch.ones(2)}, rng=[capture_rng()], log_rows=[{"step": 1, "g": 0.5}])
    return state


def test_save_is_atomic_and_weights_only_loadable(tmp_path):
    path = tmp_path / "sub" / "state.pt"
    save_state(path, _minimal_state(ModelConfig(image_size=64)))
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == STATE_FORMAT and raw["step"] == 3
    assert load_state(path)["log_rows"] == [{"step": 1, "g": 0.5}]


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_state(path, _minimal_state(ModelConfig(image_size=64)))
    before = path.read_bytes()

    def dies_halfway(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, _minimal_state(ModelConfig(image_size=64)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_refused_with_a_recovery_hint(tmp_path, damage):
    path = tmp_path / "state.pt"
    save_state(path, _minimal_state(ModelConfig(image_size=64)))
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[:200], "garbage": b"not a checkpoint" * 10,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as err:
        load_state(path)
    assert str(path) in str(err.value) and "rm '" in str(err.value)


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a cardiGAN training state"):
        load_state(path)
    torch.save({"format": STATE_FORMAT, "step": 1}, path)
    with pytest.raises(CheckpointError, match="lacks fingerprint"):
        load_state(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(tmp_path / "nope.pt")


def test_model_mismatch_names_the_settings(tmp_path):
    saved = ModelConfig(image_size=64, ngf=8, label_nc=4)
    state = _minimal_state(saved)
    check_model_config("x.pt", state, saved)  # same: fine
    with pytest.raises(CheckpointError) as err:
        check_model_config("x.pt", state, ModelConfig(image_size=128, ngf=8, label_nc=5))
    msg = str(err.value)
    assert "train.label_nc: checkpoint 4, config 5" in msg
    assert "data.image_size: checkpoint 64, config 128" in msg and "ngf" not in msg


def test_fingerprint_dir(tmp_path):
    assert fingerprint_dir(tmp_path, "0123456789abcdef" + "f" * 48) == Path(tmp_path) / (
        "0123456789abcdef")
