"""Texture and diversity: do synthetic images carry speckle like real ones, and do they vary?

Both are computed per region of the mask (LV cavity, myocardium, left atrium, and the tissue
outside the labels) inside the imaging field: the pixels that are inside the sector in most
real training images (the zero-filled corners outside the fan are no tissue).

- intensity mean and std of each region (grey levels 0..255), per image, then over images;
- speckle: the local coefficient of variation (std / mean in a small window) averaged over the
  region; fully developed speckle after log compression gives a characteristic value, a smooth
  "mean-style" image gives a much lower one;
- diversity: for masks sampled several times, the pixel-wise std between the samples of one
  mask outside the labelled structures (how much the anatomy outside the labels, the artefacts
  and the grey levels change from one style to the next); and the spread of whole images in a
  feature space, synthetic vs real.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.ndimage import uniform_filter

#: Region name -> mask label (None: outside the labels, inside the field).
REGIONS = {"LV_cavity": 1, "myocardium": 2, "LA": 3, "outside": 0}
#: Side of the window of the local coefficient of variation, in pixels.
SPECKLE_WINDOW = 5
#: Local means below this grey level are left out of the coefficient of variation (noise floor).
DARK_FLOOR = 2.0


def imaging_field(real_images: np.ndarray, share: float = 0.5) -> np.ndarray:
    """(H, W) bool: pixels that are non-zero in at least ``share`` of the real images."""
    if len(real_images) == 0:
        raise ValueError("no real images to find the imaging field from")
    return (real_images > 0).mean(axis=0) >= share


def local_cv(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Local coefficient of variation (std / mean) over the region's pixels of each
    ``SPECKLE_WINDOW`` window: pixels of other regions are left out, so the edge between two
    structures is not mistaken for texture. NaN where less than half the window is in the region
    or the local mean is below the noise floor."""
    x = image.astype(np.float64)
    m = region.astype(np.float64)
    share = uniform_filter(m, SPECKLE_WINDOW, mode="constant")
    safe = np.maximum(share, 1e-12)
    mean = uniform_filter(x * m, SPECKLE_WINDOW, mode="constant") / safe
    sq = uniform_filter(x * x * m, SPECKLE_WINDOW, mode="constant") / safe
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    ok = (share >= 0.5) & (mean > DARK_FLOOR)
    return np.where(ok, std / np.maximum(mean, DARK_FLOOR), np.nan)


def region_stats(images: np.ndarray, masks: np.ndarray, field: np.ndarray
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Per region, per image: ``intensity_mean``, ``intensity_std``, ``speckle_cv`` (NaN where an
    image has no pixel of the region)."""
    out = {r: {k: np.full(len(images), np.nan) for k in ("intensity_mean", "intensity_std",
                                                          "speckle_cv")} for r in REGIONS}
    for i, (img, mask) in enumerate(zip(images, masks)):
        x = img.astype(np.float64)
        for region, label in REGIONS.items():
            sel = (mask == label) & field
            if not sel.any():
                continue
            out[region]["intensity_mean"][i] = x[sel].mean()
            out[region]["intensity_std"][i] = x[sel].std()
            vals = local_cv(img, sel)[sel]
            vals = vals[np.isfinite(vals)]
            if vals.size:
                out[region]["speckle_cv"][i] = vals.mean()
    return out


def within_mask_spread(images: np.ndarray, masks: np.ndarray, groups: np.ndarray,
                       field: np.ndarray) -> tuple[float, float, int]:
    """Pixel-wise std between the samples of each mask, outside the labels and inside the field,
    averaged over the pixels of a mask and then over masks: ``(mean, std over masks, masks)``.

    Only masks sampled at least twice count; ``(nan, nan, 0)`` when there are none.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[str(g)].append(i)
    spreads = []
    for idx in members.values():
        if len(idx) < 2:
            continue
        sel = (masks[idx[0]] == 0) & field
        if not sel.any():
            continue
        stack = images[idx].astype(np.float64)[:, sel]
        spreads.append(stack.std(axis=0).mean())
    if not spreads:
        return float("nan"), float("nan"), 0
    return float(np.mean(spreads)), float(np.std(spreads)), len(spreads)


def brightness(images: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Mean grey level inside the field, per image (gain / grey-map diversity)."""
    return images[:, field].astype(np.float64).mean(axis=1)


def feature_spread(features: np.ndarray) -> float:
    """Root of the mean per-dimension variance of a feature set (its spread)."""
    if len(features) < 2:
        return float("nan")
    return float(np.sqrt(features.var(axis=0, ddof=1).mean()))
