"""The 2023 public release: ``database_nifti/patientXXXX/…nii.gz`` and ``database_split/``."""

from __future__ import annotations

from pathlib import Path

from cardigan.data.camus import files
from cardigan.data.camus.records import CamusError, PatientSource, Scan

EXT = ".nii.gz"


def is_layout(root: Path) -> bool:
    return (root / "database_nifti").is_dir()


def scan(root: str | Path) -> Scan:
    root = Path(root)
    base = root / "database_nifti"
    if not base.is_dir():
        raise CamusError(f"{root}: no database_nifti/ folder (not the 2023 NIfTI release)")
    folders = sorted(d for d in base.iterdir() if d.is_dir() and d.name.startswith("patient"))
    # The official split lives in database_split/ and is read by split.assign (it can name
    # patients that do not exist, which is an error reported against the split file).
    patients = [PatientSource(d.name, d.name, str(d), None) for d in folders]
    return Scan("nifti2023", str(root), patients)


def validate_patient(root: str, p: PatientSource, views, instants) -> list[str]:
    return files.validate_patient(p, views, instants, EXT)


def read_patient(root: str, p: PatientSource, views, instants):
    return files.read_patient(root, p, views, instants, EXT)
