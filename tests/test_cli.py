"""The ``cardigan`` command: each stage outside Snakemake gives what the workflow gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, TINY, completed_run

from cardigan.cli import main


def _merged_tiny_config(dest: Path) -> Path:
    """config.yaml overlaid with the tiny config, as Snakemake's --configfile does."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for section, values in yaml.safe_load((REPO / TINY).read_text()).items():
        for key, value in values.items():
            if isinstance(value, dict):
                config[section].setdefault(key, {}).update(value)
            else:
                config[section][key] = value
    dest.write_text(yaml.safe_dump(config))
    return dest


STAGES = ["phantom", "extract", "train", "sample", "export", "evaluate"]


def cardigan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cardigan.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_stage_in_one_line_and_version(tmp_path):
    out = cardigan("--help", cwd=tmp_path).stdout
    for stage in STAGES:
        (line,) = [ln for ln in out.splitlines() if ln.strip().startswith(stage + " ")]
        assert len(line.split(None, 1)[1]) > 10, line
    version = cardigan("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("cardigan ")


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_named_as_typed(stage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([stage, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cardigan {stage} ")
    assert "--config" in out and "--set" in out


def test_unknown_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bogus"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_reads_config_yaml_here_and_errors_in_one_line(stage, tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    # ./config.yaml is read by default, like the workflow does
    (tmp_path / "config.yaml").write_text("data:\n  views: [3CH]\n")
    assert main([stage]) == 1
    assert capsys.readouterr().err == (f"cardigan {stage}: error: config key data.views[0]: '3CH' "
                                       "is not one of ['2CH', '4CH']\n")
    # --set overrides it, and a bad --set value is named
    assert main([stage, "--set", "data.views=[4CH]", "--set", "train.epochs=many"]) == 1
    assert capsys.readouterr().err == (f"cardigan {stage}: error: config key train.epochs: 'many' "
                                       "is not an integer\n")


@pytest.mark.parametrize("stage", STAGES[1:])
def test_missing_inputs_are_one_line_errors(stage, tmp_path, monkeypatch, capsys):
    # The config is fine; the previous stage's outputs are absent (phantom has no inputs).
    monkeypatch.chdir(tmp_path)
    assert main([stage, "--config", str(REPO / "config.yaml")]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"cardigan {stage}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]


def test_explicit_missing_config_file_is_named(tmp_path, capsys):
    assert main(["sample", "--config", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cardigan sample: error: config file ") and "nope.yaml" in err


@pytest.mark.slow
def test_sample_cli_matches_the_workflow(tmp_path_factory, tmp_path):
    run = completed_run(tmp_path_factory.getbasetemp())
    config = _merged_tiny_config(tmp_path / "config.yaml")
    out = tmp_path / "samples.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "cardigan.cli", "sample", "--config", str(config),
         "--data-dir", str(run / "results/data"), "--generator",
         str(run / "results/train/generator.pt"), "--out", str(out), "--threads", "2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == (run / "results/sample/samples.h5").read_bytes()


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    import torch

    from cardigan.gan.generator_file import save_generator
    from cardigan.gan.model import build_models
    from cardigan.gan.model_config import ModelConfig

    path = tmp_path_factory.mktemp("gen") / "generator.pt"
    cfg = ModelConfig(image_size=64, ngf=4, ndf=4, spade_hidden=8, n_layers_D=2, use_vae=False,
                      texture_noise=False)
    torch.manual_seed(0)
    save_generator(path, build_models(cfg)[0], cfg)
    return path


@pytest.mark.parametrize("bad, message", [
    ("blank", "blank.png (blank unknown unknown): the mask is all background"),
    ("corrupt", "corrupt.png: not a readable PNG image"),
    ("truncated", "truncated.png: not a readable PNG image"),
])
def test_sample_masks_refuses_a_bad_mask_file_and_writes_nothing(tiny_generator, tmp_path, bad,
                                                                  message):
    import numpy as np
    from PIL import Image

    from cardigan.data.masks import toy_heart_mask

    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(toy_heart_mask(64)).save(masks / "good.png")
    if bad == "blank":
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "blank.png")
    elif bad == "corrupt":
        (masks / "corrupt.png").write_bytes(b"this is not a PNG")
    else:
        data = (masks / "good.png").read_bytes()
        (masks / "truncated.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "samples.h5"
    proc = cardigan("sample", "--generator", str(tiny_generator), "--masks", str(masks),
                    "--out", str(out), "--styles", "1", "--augment", "0",
                    "--set", "sample.grey_levels=none", "--set", "sample.speckle=none",
                    cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (error,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("cardigan sample: error:")]
    assert message in error and error.endswith(proc.stderr.strip().splitlines()[-1]), proc.stderr
    assert ".cxx" not in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not out.parent.exists()
