"""Where every stage's outputs live, relative to the working directory: the one place they are
spelled. The workflow's rules (``workflow/rules/common.smk``) and the ``cardigan`` command both
take their paths from here, and the stages receive the paths they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

RESULTS = "results"
SPLITS = ("train", "valid", "test")

PHANTOM_DIR = f"{RESULTS}/phantom/CAMUS_public"
DATA_DIR = f"{RESULTS}/data"
METADATA = f"{DATA_DIR}/metadata.csv"
TRAIN_DIR = f"{RESULTS}/train"
#: The training state: not a declared output (Snakemake deletes a failed job's outputs, and the
#: checkpoint must survive a killed job to resume from).
TRAIN_STATE_DIR = f"{TRAIN_DIR}/state"  # = train_state_dir(TRAIN_DIR)
GENERATOR = f"{TRAIN_DIR}/generator.pt"
SAMPLES = f"{RESULTS}/sample/samples.h5"
EXPORT_DIR = f"{RESULTS}/export"
SYNTHETIC = f"{EXPORT_DIR}/synthetic.h5"
EVALUATE_DIR = f"{RESULTS}/evaluate"
MANIFEST = f"{RESULTS}/manifest.tsv"
#: The label-budget curve: one folder per budget (``{LABEL_BUDGET_DIR}/<patients>``, and
#: ``FULL_BUDGET`` for the full train split, which reuses the default run's GAN and samples).
LABEL_BUDGET_DIR = f"{RESULTS}/label_budget"
FULL_BUDGET = "all"
BUDGET_PATIENTS = "patients.tsv"  # in a budget's data folder: its patients and their grades


def image_file(split: str, view: str, data_dir: str = DATA_DIR) -> str:
    """Extracted images of one split and view."""
    return f"{data_dir}/{split}_{view}.h5"


def anno_file(split: str, view: str, data_dir: str = DATA_DIR) -> str:
    """Extracted masks of one split and view."""
    return f"{data_dir}/anno_{split}_{view}.h5"


def preview_file(split: str, data_dir: str = DATA_DIR) -> str:
    return f"{data_dir}/preview_{split}.png"


def extracted(splits: Iterable[str], views: Iterable[str], *, images: bool = True,
              annos: bool = True, data_dir: str = DATA_DIR) -> list[str]:
    """Extracted HDF5 files of ``splits`` x ``views``: images first, then masks."""
    pairs = [(s, v) for s in splits for v in views]
    out = [image_file(s, v, data_dir) for s, v in pairs] if images else []
    return out + ([anno_file(s, v, data_dir) for s, v in pairs] if annos else [])


def train_outputs(train_dir: str = TRAIN_DIR) -> dict[str, str]:
    """Declared outputs of train, by rule output name."""
    return {
        "generator": f"{train_dir}/generator.pt",
        "config": f"{train_dir}/config.json",
        "log_csv": f"{train_dir}/train_log.csv",
        "losses": f"{train_dir}/losses.png",
        "samples": f"{train_dir}/samples",
    }


def export_outputs(export_cfg: Mapping[str, Any], export_dir: str = EXPORT_DIR) -> dict[str, str]:
    """Declared outputs of export (the nnU-Net folder only when ``formats`` holds nnunet)."""
    out = {
        "h5": f"{export_dir}/synthetic.h5",
        "preview": f"{export_dir}/preview.png",
        "card": f"{export_dir}/dataset_card.md",
    }
    if "nnunet" in export_cfg["formats"]:
        out["nnunet"] = nnunet_dir(export_cfg, export_dir)
        out["datalist"] = datalist_file(export_dir)
    return out


def datalist_file(export_dir: str = EXPORT_DIR) -> str:
    """The MONAI Decathlon-style datalist written beside the nnU-Net dataset."""
    return f"{export_dir}/datalist.json"


def nnunet_dir(export_cfg: Mapping[str, Any], export_dir: str = EXPORT_DIR) -> str:
    """The nnU-Net v2 raw dataset folder (``export.formats`` holding nnunet)."""
    nn = export_cfg["nnunet"]
    return f"{export_dir}/nnunet/Dataset{nn['dataset_id']:03d}_{nn['name']}"


def evaluate_outputs(evaluate_dir: str = EVALUATE_DIR) -> dict[str, str]:
    return {
        "metrics": f"{evaluate_dir}/metrics.csv",
        "dice": f"{evaluate_dir}/dice.png",
        "summary": f"{evaluate_dir}/summary.md",
        "worst": f"{evaluate_dir}/worst.png",
    }


def stage_log(stage: str) -> str:
    return f"{RESULTS}/logs/{stage}.log"


def benchmark(stage: str) -> str:
    return f"{RESULTS}/benchmarks/{stage}.tsv"


def budget_dir(budget: str) -> str:
    """A label budget's folder (``budget``: its patient count, or a wildcard pattern)."""
    return f"{LABEL_BUDGET_DIR}/{budget}"


def budget_data_dir(budget: str) -> str:
    """A budget's train subset, as an extracted train split of its own."""
    return f"{budget_dir(budget)}/data"


def budget_patients_file(budget: str) -> str:
    return f"{budget_data_dir(budget)}/{BUDGET_PATIENTS}"


def budget_train_dir(budget: str) -> str:
    return f"{budget_dir(budget)}/train"


def train_state_dir(train_dir: str) -> str:
    """A training run's state folder (checkpoints to resume from), inside its train folder."""
    return f"{train_dir}/state"


def budget_samples(budget: str) -> str:
    return f"{budget_dir(budget)}/sample/samples.h5"


def budget_evaluate_dir(budget: str) -> str:
    return f"{budget_dir(budget)}/evaluate"


def label_budget_outputs() -> dict[str, str]:
    """Declared outputs of the curve over all budgets."""
    return {
        "curve_png": f"{LABEL_BUDGET_DIR}/label_budget.png",
        "curve_csv": f"{LABEL_BUDGET_DIR}/label_budget.csv",
        "summary": f"{LABEL_BUDGET_DIR}/summary.md",
    }
