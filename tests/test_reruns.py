"""Caching: after a complete tiny run, exactly the stages a change affects re-run.

Each scenario edits a clone of one complete run and asks ``snakemake -n`` which jobs it would run
(Snakemake's params trigger: each rule gets its config section through ``params:``). Scenario 1
and the evaluate scenario are also run for real, to check that the plan is what happens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow_helpers import clone, edit_tiny, completed_run, planned_jobs, snakemake, tree_hashes

pytestmark = pytest.mark.slow

AFTER_TRAIN = {"sample", "export", "evaluate", "manifest"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return completed_run(tmp_path_factory.getbasetemp())


def test_complete_run_has_nothing_to_do(run, tmp_path):
    work = clone(run, tmp_path / "run")
    assert planned_jobs(work) == {}
    before = tree_hashes(work)
    proc = snakemake(work)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert tree_hashes(work) == before


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("sample", "seed", 7, AFTER_TRAIN),
        ("train", "lr_G", 0.0003, {"train"} | AFTER_TRAIN),
        ("data", "image_size", 32, {"extract", "train"} | AFTER_TRAIN),
        ("evaluate", "iterations", 10, {"evaluate", "manifest"}),
    ],
    ids=["sample-setting", "train-setting", "image-size", "evaluate-setting"],
)
def test_setting_reruns_exactly_its_stage_and_after(run, tmp_path, section, key, value, expected):
    work = clone(run, tmp_path / "run")
    edit_tiny(work, section, key, value)
    assert set(planned_jobs(work)) == expected


def test_comment_in_config_yaml_reruns_nothing(run, tmp_path):
    work = clone(run, tmp_path / "run")
    config = work / "config.yaml"
    config.write_text(config.read_text().replace("# cardiGAN", "# cardiGAN (edited comment)", 1))
    assert "edited comment" in config.read_text()
    assert planned_jobs(work) == {}


def test_evaluate_change_really_runs_only_evaluate(run, tmp_path):
    work = clone(run, tmp_path / "run")
    edit_tiny(work, "evaluate", "iterations", 10)
    before = tree_hashes(work)
    snakemake(work)
    after = tree_hashes(work)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert {"results/evaluate/metrics.csv", "results/manifest.tsv"} <= changed, changed
    assert all(p.startswith(("results/evaluate/", "results/manifest.tsv")) for p in changed), changed
    assert planned_jobs(work) == {}
