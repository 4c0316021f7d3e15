"""What the CAMUS readers hand to the extractor: patients, frames and the error they raise."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

FORMATS = ("nifti2023", "mhd2019", "legacy_h5")
_NUMBERED = re.compile(r"^patient(\d+)$")


class CamusError(ValueError):
    """Bad CAMUS input. The message names the file or patient and what is wrong with it."""


@dataclass(frozen=True)
class PatientSource:
    """One patient as the release stores it.

    ``name`` is the name written to the extracted files: unique across the whole dataset (see
    :func:`unique_names`). ``source_id`` is how the release itself names the patient
    (``patient0001``, ``testing/patient0001``, ``test/patient0001``).
    """

    name: str
    source_id: str
    location: str  # folder of the patient's files, or the HDF5 group path
    official_split: str | None  # train | valid | test | None (the release does not place it)


@dataclass
class Scan:
    """Every patient a source holds, in the release's order, and the ones it had to leave out."""

    fmt: str
    root: str
    patients: list[PatientSource]
    withheld: list[str] = field(default_factory=list)  # source ids whose ground truth is withheld


@dataclass(frozen=True)
class LoadedFrame:
    """One view/instant of one patient at its original size, checked."""

    view: str
    instant: str
    image: np.ndarray  # (H, W) uint8
    mask: np.ndarray  # (H, W) uint8 in 0..3
    spacing: tuple[float, float]  # (row mm, column mm); NaN when the source does not record it
    source_file: str
    mask_file: str
    info: dict  # metadata columns: frame, nb_frames, image_quality, ef, age, sex, frame_rate


def patient_number(name: str) -> int | None:
    m = _NUMBERED.match(name)
    return int(m.group(1)) if m else None


def unique_names(groups: list[list[str]], where: list[str]) -> list[list[str]]:
    """Make patient names unique across groups that each number their patients from 1.

    The 2019 release numbers ``testing/`` from patient0001 again, and a legacy single-file HDF5 may do the
    same per split group. Groups are taken in order; when a group shares any name with the groups
    before it, *every* patient of that group is renumbered ``patient{M + n:04d}``, with ``M`` the
    largest number used so far and ``n`` its own number. Renumbering the whole group (not only the
    colliding names) keeps the new names disjoint from the old ones and from each other, so the
    result does not depend on the split mode and a test patient can never overwrite or merge with
    a training patient in any output file. ``where`` names each group for error messages.
    """
    taken: set[str] = set()
    out: list[list[str]] = []
    for names, label in zip(groups, where):
        if len(set(names)) != len(names):
            raise CamusError(f"{label}: the same patient name appears twice")
        if taken & set(names):
            numbers = [patient_number(n) for n in names]
            before = [patient_number(n) for n in taken]
            if None in numbers or None in before:
                clash = sorted(taken & set(names))[0]
                raise CamusError(
                    f"{label}: patient {clash!r} is also in an earlier group and its name is not "
                    "of the form patientNNNN, so it cannot be renumbered"
                )
            offset = max(before)  # type: ignore[type-var]
            names = [f"patient{offset + n:04d}" for n in numbers]  # type: ignore[operator]
        taken.update(names)
        out.append(list(names))
    return out
