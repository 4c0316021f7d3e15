"""Which of the three on-disk forms a CAMUS path holds (``data.format: auto``)."""

from __future__ import annotations

from pathlib import Path

from cardigan.data.camus import legacy_h5, mhd2019, nifti2023
from cardigan.data.camus.records import FORMATS, CamusError

READERS = {"nifti2023": nifti2023, "mhd2019": mhd2019, "legacy_h5": legacy_h5}


def detect_format(path: str | Path) -> str:
    """``nifti2023`` (has database_nifti/), ``mhd2019`` (has training/) or ``legacy_h5`` (an HDF5 file)."""
    path = Path(path)
    if not path.exists():
        raise CamusError(f"{path}: does not exist")
    if path.is_file():
        if legacy_h5.is_layout(path):
            return "legacy_h5"
        raise CamusError(f"{path}: a file but not HDF5, so not the legacy single-file dataset_camus layout")
    if nifti2023.is_layout(path):
        return "nifti2023"
    if mhd2019.is_layout(path):
        return "mhd2019"
    raise CamusError(
        f"{path}: cannot tell the CAMUS form: expected database_nifti/ (2023 NIfTI release), "
        "training/ (2019 MetaImage release) or a legacy single-file HDF5 (legacy_h5)"
    )


def resolve_format(path: str | Path, fmt: str) -> str:
    if fmt == "auto":
        return detect_format(path)
    if fmt not in FORMATS:
        raise CamusError(f"format {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    return fmt
