"""The ``cardigan`` command: each stage outside Snakemake gives what the workflow gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cardigan.cli import main
from workflow_helpers import REPO, TINY, completed_run


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


def test_unknown_stage_and_bad_config(tmp_path, capsys):
    assert main(["bogus"]) == 2
    assert "unknown stage 'bogus'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  views: [3CH]\n")
    assert main(["sample", "--config", str(bad)]) == 1
    assert "config key data.views[0]" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_cli_matches_the_workflow(tmp_path_factory, tmp_path):
    run = completed_run(tmp_path_factory.getbasetemp())
    config = _merged_tiny_config(tmp_path / "config.yaml")
    out = tmp_path / "samples.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "cardigan.cli", "sample", "--config", str(config),
         "--data-dir", str(run / "results/data"), "--generator",
         str(run / "results/train/generator.pt"), "--out", str(out), "--threads", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == (run / "results/sample/samples.h5").read_bytes()
