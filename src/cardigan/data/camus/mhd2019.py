"""The 2019 release: ``training/`` and ``testing/`` patient folders of MetaImage ``.mhd``/``.raw``.

``testing/`` numbers its patients from patient0001 again, so its names collide with ``training/``;
:func:`records.unique_names` renumbers them (patient0001 of testing/ becomes patient0451 when
training/ ends at patient0450). A testing/ patient without any ``*_gt.mhd`` file had its ground
truth withheld by the challenge: it is left out and counted, whatever its Info cfg holds.
"""

from __future__ import annotations

from pathlib import Path

from cardigan.data.camus import files
from cardigan.data.camus.records import CamusError, PatientSource, Scan, unique_names

EXT = ".mhd"


def is_layout(root: Path) -> bool:
    return (root / "training").is_dir()


def _folders(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted(d for d in base.iterdir() if d.is_dir() and d.name.startswith("patient"))


def _official_valid_count(n_training: int) -> int:
    """The last 50 of training/'s 450 are the validation split; fewer patients scale it (1 in 9)."""
    if n_training < 2:
        return 0
    return max(1, round(n_training * 50 / 450))


def scan(root: str | Path) -> Scan:
    root = Path(root)
    if not (root / "training").is_dir():
        raise CamusError(f"{root}: no training/ folder (not the 2019 MetaImage release)")
    training = _folders(root / "training")
    testing = _folders(root / "testing")
    names = unique_names(
        [[d.name for d in training], [d.name for d in testing]],
        [str(root / "training"), str(root / "testing")],
    )
    n_valid = _official_valid_count(len(training))
    patients = []
    for i, (d, name) in enumerate(zip(training, names[0])):
        split = "valid" if i >= len(training) - n_valid else "train"
        patients.append(PatientSource(name, f"training/{d.name}", str(d), split))
    withheld = []
    for d, name in zip(testing, names[1]):
        if not any(d.glob(f"*_gt{EXT}")):
            withheld.append(f"testing/{d.name}")
            continue
        patients.append(PatientSource(name, f"testing/{d.name}", str(d), "test"))
    return Scan("mhd2019", str(root), patients, withheld)


def validate_patient(root: str, p: PatientSource, views, instants) -> list[str]:
    return files.validate_patient(p, views, instants, EXT)


def read_patient(root: str, p: PatientSource, views, instants):
    return files.read_patient(root, p, views, instants, EXT)
