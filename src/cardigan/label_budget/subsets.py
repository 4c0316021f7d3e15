"""Which train patients a label budget holds: nested subsets, stratified by image quality.

The train split's patients are put in one seeded order, and a budget of B patients is the first B
of it, so the subsets are nested (the 5 are inside the 10) and a budget's subset depends only on
the split, the seed and B: adding a budget changes no other budget's patients. The order is
stratified: each quality grade's patients are shuffled and spread evenly along the order
(systematic sampling with a random phase per grade), so every prefix holds each grade in its
share of the split, within one patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cardigan.core import layout
from cardigan.core.atomic import atomic_outputs
from cardigan.data.frames import copy_frames, frame_ids, split_paths

#: Grades from best to worst; a patient whose frames have several takes the worst of them.
GRADES = ("Good", "Medium", "Poor")


def train_patients(data_dir: str | Path, views: Iterable[str]) -> list[str]:
    """The patients of the extracted train split (any of ``views``), sorted."""
    return sorted({patient for view in views
                   for patient, _, _ in frame_ids(split_paths(data_dir, "train", view)[0])})


def patient_grades(metadata: pd.DataFrame, patients: Iterable[str],
                   views: Iterable[str]) -> dict[str, str]:
    """patient -> ImageQuality grade of its frames in ``views`` (the worst where they differ;
    "" where the metadata has none)."""
    rows = metadata[metadata.view.isin(list(views))]
    grades: dict[str, str] = {}
    for patient in patients:
        have = set(rows.loc[rows.patient == patient, "image_quality"].astype(str))
        ranked = [g for g in GRADES if g in have]
        grades[patient] = ranked[-1] if ranked else ""
    return grades


def patient_order(grades: Mapping[str, str], seed: int) -> list[str]:
    """All patients of ``grades`` in the seeded, quality-stratified order the budgets take from.

    Within a grade of n patients, the i-th (after a seeded shuffle) sits at (i + phase) / n,
    with one seeded phase in [0, 1) per grade; the order sorts these positions.
    """
    rng = np.random.default_rng(seed)
    keyed: list[tuple[float, int, str]] = []
    for rank, grade in enumerate(sorted(set(grades.values()))):
        members = sorted(p for p, g in grades.items() if g == grade)
        shuffled = [members[i] for i in rng.permutation(len(members))]
        phase = rng.random()
        keyed += [((i + phase) / len(members), rank, p) for i, p in enumerate(shuffled)]
    return [p for _, _, p in sorted(keyed)]


def budget_patients(order: Sequence[str], budget: int) -> list[str]:
    """The first ``budget`` patients of ``order``; the budget must be below the whole split."""
    if not 0 < budget < len(order):
        raise ValueError(f"config key label_budget.patients: {budget} is not between 1 and the "
                         f"train split's {len(order)} patients (exclusive): the full split is the "
                         "curve's last point already")
    return list(order[:budget])


def write_budget_data(data_dir: str | Path, out_dir: str | Path, views: Sequence[str],
                      budget: int, seed: int) -> list[str]:
    """Write a budget's train subset as an extracted train split of its own (``out_dir``: the
    per-view HDF5 pairs, metadata.csv and patients.tsv, all or none); return its patients."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    metadata = pd.read_csv(data_dir / "metadata.csv", dtype=str, keep_default_na=False)
    grades = patient_grades(metadata, train_patients(data_dir, views), views)
    chosen = budget_patients(patient_order(grades, seed), budget)
    targets = [Path(p) for p in layout.extracted(["train"], views, data_dir=str(out_dir))]
    targets += [out_dir / "metadata.csv", out_dir / layout.BUDGET_PATIENTS]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_outputs(targets) as tmps:
        by_target = dict(zip(targets, tmps))
        for view in views:
            copy_frames(*split_paths(data_dir, "train", view),
                                  *(by_target[p] for p in split_paths(out_dir, "train", view)),
                                  chosen)
        keep = metadata.patient.isin(chosen) & (metadata.split == "train")
        metadata[keep].to_csv(by_target[out_dir / "metadata.csv"], index=False)
        by_target[out_dir / layout.BUDGET_PATIENTS].write_text(
            "patient\timage_quality\n" + "".join(f"{p}\t{grades[p]}\n" for p in chosen))
    return chosen



def read_budget_patients(path: str | Path) -> list[str]:
    """The patients of a budget, from the patients.tsv that :func:`write_budget_data` wrote."""
    return list(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False).patient)
