"""CAMUS label values, instants and views: the vocabulary every stage shares."""

from __future__ import annotations

LABELS: dict[int, str] = {
    0: "background",
    1: "LV cavity",
    2: "LV myocardium",
    3: "left atrium",
}
NUM_LABELS = len(LABELS)

VIEWS = ("2CH", "4CH")
INSTANTS = ("ED", "ES")
#: HDF5 channel index of each instant in the extracted files (the original project's convention).
INSTANT_CHANNEL = {"ED": 0, "ES": 1}
SPLITS = ("train", "valid", "test")

#: Evaluation structures: name -> label values that make it up.
STRUCTURES: dict[str, tuple[int, ...]] = {
    "LV_endo": (1,),
    "LV_epi": (1, 2),
    "LA": (3,),
}
