"""The label-budget curve's entry points, as the workflow's rules call them."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from cardigan.label_budget.curve import write_curve
from cardigan.label_budget.subsets import read_budget_patients, train_patients

log = logging.getLogger("cardigan")


def trained_iterations(config_json: str | Path) -> int:
    """The iterations a GAN trained for, from the config.json written beside its generator."""
    return int(json.loads(Path(config_json).read_text())["resolved"]["total_steps"])


def run_curve(*, metrics: Mapping[str, str | Path], patients_files: Mapping[str, str | Path],
              train_configs: Mapping[str, str | Path], full_budget: str, data_dir: str | Path,
              views: Sequence[str], outputs: Mapping[str, str | Path]) -> None:
    """Write the curve over every budget. The mappings are keyed by budget: a patient count, or
    ``full_budget`` for the full train split (the main run's, read from ``data_dir``)."""
    full = len(train_patients(data_dir, views))
    patients = {b: full if b == full_budget else int(b) for b in metrics}
    subsets = {int(b): read_budget_patients(p) for b, p in patients_files.items()}
    for budget, chosen in subsets.items():
        if len(chosen) != budget:
            raise ValueError(f"{patients_files[str(budget)]}: {len(chosen)} patients for a "
                             f"budget of {budget}")
    iterations = {patients[b]: trained_iterations(p) for b, p in train_configs.items()}
    curve = write_curve({patients[b]: p for b, p in metrics.items()}, subsets, full, iterations,
                        outputs["curve_png"], outputs["curve_csv"], outputs["summary"])
    log.info("label budget: %d points (%s patients), wrote %s", curve.patients.nunique(),
             ", ".join(str(p) for p in sorted(patients.values())), ", ".join(map(str, outputs.values())))
