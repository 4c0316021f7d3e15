"""Caching: after a complete tiny run, exactly the stages a change affects re-run.

Each scenario edits a clone of one complete run and asks ``snakemake -n`` which jobs it would run
(Snakemake's params trigger: each rule gets its config section through ``params:``). Scenario 1
and the evaluate scenario are also run for real, to check that the plan is what happens.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from workflow_helpers import clone, completed_run, edit_tiny, planned_jobs, snakemake, tree_hashes

from cardigan.core.code_fingerprint import package_root

pytestmark = pytest.mark.slow

# The tiny config exports nnU-Net too (rule nnunet, after export).
AFTER_TRAIN = {"sample", "export", "nnunet", "evaluate", "manifest"}


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
        # the nnU-Net export is its own rule: synthetic.h5 (and so evaluate) stays
        ("export", "nnunet", {"dataset_id": 8}, {"nnunet", "manifest"}),
        ("export", "formats", ["h5"], {"manifest"}),
        ("export", "include_real", True, {"export", "nnunet", "evaluate", "manifest"}),
    ],
    ids=["sample-setting", "train-setting", "image-size", "evaluate-setting", "nnunet-setting",
         "nnunet-format-off", "export-setting"],
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


# ------------------------------------------------------------------------------------------------
# The README's command-line overrides (Snakemake passes every nested value as a string).
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sample={seed: 12345}", AFTER_TRAIN),
        ("data={image_size: 32}", {"extract", "train"} | AFTER_TRAIN),
        ("evaluate={enabled: false}", {"manifest"}),
        ("sample={augment: {scale: [0.9, 1.1]}}", AFTER_TRAIN),
    ],
)
def test_command_line_override_reruns_exactly_its_stage_and_after(run, tmp_path, override,
                                                                   expected):
    work = clone(run, tmp_path / "run")
    assert set(planned_jobs(work, "--config", override)) == expected


@pytest.mark.parametrize(
    "override",
    ["train={seed: 0}", "train={amp: true, epochs: 2}", "phantom={seed: 0}",
     "phantom={quality_shares: {Poor: 0.25, Medium: 0.4, Good: 0.35}}"],
)
def test_a_setting_given_its_current_value_reruns_nothing(run, tmp_path, override):
    """A key's position in the config depends on where it came from (file, --config, default);
    a value that is already in effect is no change, wherever it is given."""
    work = clone(run, tmp_path / "run")
    assert planned_jobs(work, "--config", override) == {}


def test_more_epochs_on_the_command_line_continue_the_finished_run(run, tmp_path):
    work = clone(run, tmp_path / "run")
    done = json.loads((run / "results/train/config.json").read_text())["resolved"]["total_steps"]
    snakemake(work, "results/train/generator.pt", "--config", "train={epochs: 3}")
    log = (work / "results/logs/train.log").read_text()
    line = next(ln for ln in log.splitlines() if "resuming" in ln)
    assert f"at iteration {done}/" in line, line
    total = json.loads((work / "results/train/config.json").read_text())["resolved"]["total_steps"]
    assert total > done


# ------------------------------------------------------------------------------------------------
# Code changes: each rule's params hold a fingerprint of the package code its script reaches.
def test_code_edits_rerun_exactly_the_stages_whose_code_changed(run, tmp_path):
    work = clone(run, tmp_path / "run")
    pkg = work / "pkg"
    shutil.copytree(package_root(), pkg / "cardigan", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(pkg), os.environ.get("PYTHONPATH")]))}
    model, writer = pkg / "cardigan/gan/generator.py", pkg / "cardigan/export/nnunet.py"
    original = model.read_bytes()

    os.utime(model, None)  # a touch (as a checkout may do): same content
    os.utime(writer, None)
    assert planned_jobs(work, env=env) == {}

    model.write_bytes(original + b"\n# edited\n")
    assert set(planned_jobs(work, env=env)) == {"train"} | AFTER_TRAIN

    model.write_bytes(original)
    writer.write_text(writer.read_text() + "\n# edited\n")
    assert set(planned_jobs(work, env=env)) == {"nnunet", "manifest"}


# ------------------------------------------------------------------------------------------------
def test_user_masks_are_inputs_of_sample(run, tmp_path):
    work = clone(run, tmp_path / "run")
    masks = work / "my_masks"
    (masks / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        (masks / name).write_bytes(b"not read by a dry run")
    proc = snakemake(work, "-n", "results/sample/samples.h5", "--config",
                     f"sample={{mask_path: {masks}}}")
    out = proc.stdout + proc.stderr
    block = out[out.index("rule sample:"):]
    inputs = next(ln for ln in block.splitlines() if ln.strip().startswith("input:"))
    assert str(masks / "a.png") in inputs and str(masks / "sub/b.png") in inputs, inputs
