"""Per-image Dice and HD95 (mm) of the evaluation structures, with MONAI's metrics.

Structures come from :data:`cardigan.core.labels.STRUCTURES` (LV_endo = label 1, LV_epi = labels 1|2,
LA = label 3). HD95 is the symmetric 95th-percentile Hausdorff distance between the structure
edges, in mm with each image's own (row, column) spacing. It is undefined (NaN) when the
prediction or the reference is empty; :func:`summarise` then averages over the images where it is
defined and the caller reports how many were not.

``outside``: the predicted area of a structure lying more than :data:`OUTSIDE_MARGIN_MM` from the
reference structure, as a share of the reference's area (NaN when the reference is empty). Dice
mixes it with boundary errors; alone it shows a segmenter that takes another chamber for the
labelled one — for the LA, mostly the right atrium, which CAMUS leaves unlabelled.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from scipy import ndimage

from cardigan.core.labels import STRUCTURES

#: How far from the reference structure a predicted pixel counts as "outside" it: beyond the
#: boundary disagreements of a good segmenter, well inside a neighbouring chamber.
OUTSIDE_MARGIN_MM = 5.0


def structure_masks(labels: np.ndarray) -> np.ndarray:
    """(N, H, W) label maps -> (N, S, H, W) float32 binary masks, S in STRUCTURES order."""
    labels = np.asarray(labels)
    return np.stack(
        [np.isin(labels, values) for values in STRUCTURES.values()], axis=1
    ).astype(np.float32)


def dice_hd95(
    pred: np.ndarray, gt: np.ndarray, spacings: Sequence[Sequence[float]]
) -> dict[str, dict[str, np.ndarray]]:
    """Per-image Dice and HD95 for every structure.

    ``pred`` and ``gt`` are (N, H, W) label maps, ``spacings`` (N, 2) (row mm, column mm).
    Returns ``{structure: {"dice": (N,), "hd95": (N,), "outside": (N,), "empty_pred": (N,)
    bool}}``. Dice of an empty prediction against a non-empty reference is 0; of two empty masks
    1. HD95 is NaN when either mask is empty, ``outside`` when the reference is.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and reference {gt.shape} must be equal (N, H, W)")
    spacing = np.asarray(spacings, dtype=np.float64)
    if spacing.shape != (len(pred), 2):
        raise ValueError(f"need one (row, column) spacing per image: got {spacing.shape} for {len(pred)}")
    p = torch.from_numpy(structure_masks(pred))
    g = torch.from_numpy(structure_masks(gt))
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, g)
    with warnings.catch_warnings():
        # MONAI warns for every empty mask; we count those cases ourselves.
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            p, g, spacing=[list(s) for s in spacing]
        )
    dice_np = dice.double().numpy()
    hd_np = hd.double().numpy()
    p_empty = p.sum(dim=(2, 3)).numpy() == 0
    g_empty = g.sum(dim=(2, 3)).numpy() == 0
    hd_np[p_empty | g_empty] = np.nan
    outside = outside_share(p.numpy() > 0, g.numpy() > 0, spacing)
    return {
        name: {"dice": dice_np[:, s], "hd95": hd_np[:, s], "outside": outside[:, s],
               "empty_pred": p_empty[:, s]}
        for s, name in enumerate(STRUCTURES)
    }


def outside_share(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray,
                  margin_mm: float = OUTSIDE_MARGIN_MM) -> np.ndarray:
    """(N, S) share of each reference structure's area that the prediction adds more than
    ``margin_mm`` away from it; ``pred``/``ref`` (N, S, H, W) bool, ``spacing`` (N, 2) mm."""
    out = np.full(ref.shape[:2], np.nan)
    for i, j in np.ndindex(*ref.shape[:2]):
        area = ref[i, j].sum()
        if not area:
            continue
        far = ndimage.distance_transform_edt(~ref[i, j], sampling=spacing[i]) > margin_mm
        out[i, j] = (pred[i, j] & far).sum() / area
    return out


def summarise(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count of the finite values.

    NaN mean and std when there is none.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    return float(np.mean(v)), std, int(v.size)
