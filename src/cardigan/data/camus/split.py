"""Assigning patients to the train / valid / test splits.

Modes (``data.split``):

- ``official``: the release's own split. 2023: ``database_split/subgroup_*.txt``; 2019: testing/
  is test and the last 1 in 9 of training/ (50 of 450) is valid; legacy_h5: its groups.
- ``patient_order``: 400 / 50 / 50 by patient order (the release's order: 2019 training/ then testing/,
  legacy_h5 train, valid, test). Other patient counts scale proportionally: valid and test get
  ``round(n / 10)`` each (at least one when there are three patients or more), train the rest.
- a folder holding ``subgroup_{training,validation,testing}.txt``: one patient per line, named
  either by its extracted name (``patient0451``) or by the release's own id
  (``testing/patient0001``).

A patient named by no split file is left out (and counted). A split file naming a patient that
does not exist, or naming one twice, is an error.
"""

from __future__ import annotations

from pathlib import Path

from cardigan.data.camus.records import CamusError, Scan

SPLIT_FILES = {
    "train": "subgroup_training.txt",
    "valid": "subgroup_validation.txt",
    "test": "subgroup_testing.txt",
}


def read_split_folder(folder: str | Path) -> list[tuple[str, str, Path, int]]:
    """(patient entry, split, file, line number) for every line of the three split files."""
    folder = Path(folder)
    entries = []
    for split, name in SPLIT_FILES.items():
        path = folder / name
        if not path.is_file():
            raise CamusError(f"{path}: split file is missing")
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                entries.append((line.strip(), split, path, i))
    return entries


def patient_order_counts(n: int) -> tuple[int, int, int]:
    """(train, valid, test) sizes: 400/50/50 for 500 patients, proportional otherwise."""
    held = max(round(n * 50 / 500), 1) if n >= 3 else 0
    return n - 2 * held, held, held


def assign(scan: Scan, mode: str) -> dict[str, str]:
    """Extracted patient name -> split, for every patient that belongs to one."""
    if mode == "patient_order":
        n_train, n_valid, _ = patient_order_counts(len(scan.patients))
        return {
            p.name: "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
            for i, p in enumerate(scan.patients)
        }
    if mode == "official" and scan.fmt != "nifti2023":
        return {p.name: p.official_split for p in scan.patients if p.official_split is not None}
    folder = Path(scan.root) / "database_split" if mode == "official" else Path(mode)
    if not folder.is_dir():
        raise CamusError(f"{folder}: split folder does not exist (data.split = {mode!r})")
    lookup = {}
    for p in scan.patients:
        lookup[p.name] = p
        lookup[p.source_id] = p
    withheld = set(scan.withheld)
    out: dict[str, str] = {}
    where: dict[str, tuple[Path, int]] = {}
    for entry, split, path, line in read_split_folder(folder):
        if entry in withheld:
            raise CamusError(
                f"{path}:{line}: patient {entry!r} has its ground truth withheld and cannot be used"
            )
        if entry not in lookup:
            raise CamusError(f"{path}:{line}: patient {entry!r} does not exist in {scan.root}")
        name = lookup[entry].name
        if name in out:
            first, first_line = where[name]
            raise CamusError(
                f"{path}:{line}: patient {entry!r} is already listed in {first}:{first_line}"
            )
        out[name] = split
        where[name] = (path, line)
    return out
