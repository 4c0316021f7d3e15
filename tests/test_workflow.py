"""End to end: the real workflow on tests/config/tiny.yaml, every stage, then the report."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config
from workflow_helpers import REPO, TINY, clone, completed_run, read_manifest, sha256, snakemake

from cardigan.core.config import config_hash, validate

pytestmark = pytest.mark.slow

RULES = ["phantom", "extract", "train", "sample", "export", "nnunet", "evaluate", "manifest"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return completed_run(tmp_path_factory.getbasetemp())


def effective_config() -> dict:
    """config.yaml overlaid with the tiny config, defaults filled: what the run used."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / TINY).read_text()))
    return validate(config, REPO / "workflow" / "schemas" / "config.schema.yaml")


def test_manifest_lists_every_output_with_its_hash(run):
    digest, rows = read_manifest(run)
    assert digest == config_hash(effective_config())
    expected = {
        "results/data/metadata.csv",
        "results/train/generator.pt",
        "results/sample/samples.h5",
        "results/export/synthetic.h5",
        "results/export/dataset_card.md",
        "results/evaluate/metrics.csv",
        "results/evaluate/summary.md",
    } | {f"results/data/{p}{s}_4CH.h5" for p in ("", "anno_") for s in ("train", "valid", "test")}
    assert expected <= set(rows), expected - set(rows)
    assert any(p.startswith("results/export/nnunet/Dataset501_") for p in rows)
    for path, digest in rows.items():
        assert sha256(run / path) == digest, path
    # Nothing the stages wrote is unlisted, besides logs, benchmarks, the training state and
    # train's throughput.csv and TensorBoard logs (timings, deliberately undeclared: they differ
    # between runs).
    on_disk = {
        f.relative_to(run).as_posix()
        for f in (run / "results").rglob("*")
        if f.is_file()
    }
    unlisted = {
        p
        for p in on_disk - set(rows)
        if not p.startswith(("results/logs/", "results/benchmarks/", "results/train/state/",
                             "results/train/tensorboard/"))
        and p not in ("results/manifest.tsv", "results/train/throughput.csv")
    }
    assert not unlisted, sorted(unlisted)


def test_every_rule_ran_and_logged(run):
    for rule in RULES:
        log = run / "results" / "logs" / f"{rule}.log"
        assert log.is_file(), rule
        assert f"stage {rule}" in log.read_text(), rule


def test_extracted_and_synthetic_label_sets(run):
    meta = pd.read_csv(run / "results/data/metadata.csv")
    assert set(meta["split"]) == {"train", "valid", "test"}
    with h5py.File(run / "results/data/anno_train_4CH.h5") as f:
        masks = [f[k][()] for k in f]
    assert masks and all(m.shape == (64, 64) and m.dtype == np.uint8 for m in masks)
    assert set(np.unique(np.stack(masks))) == {0, 1, 2, 3}

    with h5py.File(run / "results/export/synthetic.h5") as f:
        images, synth_masks = f["images"][()], f["masks"][()]
    assert images.dtype == np.uint8 and synth_masks.dtype == np.uint8
    assert images.shape == synth_masks.shape and images.shape[1:] == (64, 64)
    assert len(images) > 0
    assert set(np.unique(synth_masks).tolist()) == {0, 1, 2, 3}


def test_metrics_cover_every_setting(run):
    metrics = pd.read_csv(run / "results/evaluate/metrics.csv")
    text = metrics.to_string()
    for setting in ("real", "synthetic", "mixed"):
        assert setting in text, setting
    assert len(metrics) >= 3


def test_report_builds(run, tmp_path):
    work = clone(run, tmp_path / "run")
    snakemake(work, "--report", "report.html")
    report = work / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000
    text = report.read_text(errors="replace")
    for name in ("metrics.csv", "dice.png", "losses.png", "preview.png"):
        assert name in text, name
