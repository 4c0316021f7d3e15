"""Cross-validation folds grouped by source patient, so no patient is on both sides of a split.

Every synthetic sample is drawn from one source patient's mask (deformed variants and several
styles included) and real frames belong to their patient too: a random split over samples would
put near-copies of one heart in training and validation. :func:`assign_folds` gives each patient
one fold; the nnU-Net export (``splits_final.json``), the MONAI datalist and
:func:`cardigan.data.dataset.grouped_split` all use it, so they agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def assign_folds(patients: Iterable[str], n_folds: int = 5) -> dict[str, int]:
    """``{patient: fold}`` for the patients of ``patients`` (one entry per sample, repeats are the
    point): the patients with most samples first, each to the fold that has fewest samples so far
    (ties: the lower fold), so the folds are balanced in samples. Deterministic, order-free.

    Raises ValueError when there are fewer patients than folds.
    """
    counts = Counter(patients)
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if len(counts) < n_folds:
        raise ValueError(f"{len(counts)} source patients cannot fill {n_folds} folds grouped by "
                         f"patient: every fold needs at least one patient")
    sizes = [0] * n_folds
    folds: dict[str, int] = {}
    for patient, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        fold = min(range(n_folds), key=lambda k: (sizes[k], k))
        folds[patient] = fold
        sizes[fold] += n
    return folds


def fold_indices(patients: Sequence[str], n_folds: int = 5) -> list[list[int]]:
    """Per fold, the positions in ``patients`` (one entry per sample) that form its validation set."""
    folds = assign_folds(patients, n_folds)
    out: list[list[int]] = [[] for _ in range(n_folds)]
    for i, p in enumerate(patients):
        out[folds[p]].append(i)
    return out
