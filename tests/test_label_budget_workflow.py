"""The label-budget curve run by the real workflow: a budget's jobs on a complete tiny run, what
they write, and what a later change re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pandas as pd
import pytest
from workflow_helpers import clone, completed_run, edit_tiny, planned_jobs, read_manifest, snakemake

pytestmark = pytest.mark.slow

ARMS = ["real", "synthetic", "mixed", "finetuned"]
BUDGET_JOBS = {"budget_data", "budget_train", "budget_sample", "budget_evaluate"}


@pytest.fixture(scope="module")
def curve_run(tmp_path_factory) -> Path:
    """A complete tiny run, then the curve with one budget of 3 patients."""
    work = clone(completed_run(tmp_path_factory.getbasetemp()),
                 tmp_path_factory.mktemp("label-budget"))
    edit_tiny(work, "evaluate", "settings", ARMS)
    edit_tiny(work, "label_budget", "patients", [3])
    # the main evaluation gains the finetuned arm and its link to the curve
    assert planned_jobs(work) == {**dict.fromkeys(BUDGET_JOBS, 1), "evaluate": 1,
                                  "label_budget": 1, "manifest": 1}
    snakemake(work)
    return work


def test_a_budget_learns_from_its_own_patients_only(curve_run):
    results = curve_run / "results"
    chosen = pd.read_csv(results / "label_budget/3/data/patients.tsv", sep="\t").patient.tolist()
    meta = pd.read_csv(results / "data/metadata.csv")
    train = set(meta.patient[meta.split == "train"])
    assert len(chosen) == 3 and set(chosen) < train
    gan = json.loads((results / "label_budget/3/train/config.json").read_text())
    full = json.loads((results / "train/config.json").read_text())
    assert gan["data"]["frames"] == 6  # 3 patients x ED, ES
    assert gan["resolved"]["total_steps"] >= full["resolved"]["total_steps"]
    with h5py.File(results / "label_budget/3/sample/samples.h5") as f:
        sources = {v.decode() for v in f["source_patient"][()]}
    assert sources == set(chosen)


def test_the_curve_has_every_arm_at_the_budget_and_the_full_split(curve_run):
    results = curve_run / "results"
    curve = pd.read_csv(results / "label_budget/label_budget.csv")
    full = int(pd.read_csv(results / "data/metadata.csv").query("split == 'train'").patient.nunique())
    assert set(curve.patients) == {3, full}
    assert set(curve.arm) == set(ARMS)
    assert len(curve) == 2 * len(ARMS) * 4  # 3 structures and their mean
    assert curve["mean"].between(0, 1).all()
    summary = (results / "label_budget/summary.md").read_text()
    assert "## Label saving" in summary and "label_budget.png" in summary
    assert "../label_budget/summary.md" in (results / "evaluate/summary.md").read_text()
    _, listed = read_manifest(curve_run)
    assert {"results/label_budget/3/data/patients.tsv", "results/label_budget/label_budget.png",
            "results/label_budget/3/train/generator.pt"} <= set(listed)


def test_adding_a_budget_runs_that_budget_alone(curve_run, tmp_path):
    work = clone(curve_run, tmp_path / "run")
    edit_tiny(work, "label_budget", "patients", [3, 5])
    assert planned_jobs(work) == {**dict.fromkeys(BUDGET_JOBS, 1), "label_budget": 1,
                                  "manifest": 1}


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("evaluate", "iterations", 10, {"evaluate", "budget_evaluate", "label_budget", "manifest"}),
        ("label_budget", "seed", 1, BUDGET_JOBS | {"label_budget", "manifest"}),
        ("train", "lr_G", 0.0003, {"train", "sample", "export", "nnunet", "evaluate"} | BUDGET_JOBS
         - {"budget_data"} | {"label_budget", "manifest"}),
    ],
    ids=["evaluate-setting", "budget-seed", "train-setting"],
)
def test_a_setting_reruns_the_budgets_it_affects(curve_run, tmp_path, section, key, value,
                                                  expected):
    work = clone(curve_run, tmp_path / "run")
    edit_tiny(work, section, key, value)
    assert set(planned_jobs(work)) == expected
