"""Is a mask a plausible heart? Label-area ranges and where hearts lie, measured on the real train
masks (and stored in every generator file), and the structure a deformation must keep.

Plausibility (:func:`check_plausible`), on a deformed mask, relative to its source mask:

- ``missing_label``: every foreground label (1 cavity, 2 myocardium, 3 atrium) is present;
- ``fragmented``: each label is one connected component (8-connectivity, so the diagonal steps
  that nearest resampling makes on slanted edges are no breaks; pieces under 1 % of the label's
  area are ignored), or no more pieces than the source has;
- ``area``: each label's area lies in the range seen in the real train masks, widened by
  ``AREA_MARGIN`` (10 %) on both ends because deformations legitimately scale areas a little;
- ``outside_field``: the heart stays where real hearts are: at most ``OUTSIDE_TOLERANCE`` (1 %)
  of the deformed foreground may fall outside the union of the real train masks' foregrounds
  (which lies inside the ultrasound sector: the generator draws nothing but black outside it);
- ``cavity_open``: the cavity stays enclosed: the share of its 4-neighbour boundary that is
  background or the image border (ideally 0: myocardium all round except the mitral opening onto
  the atrium) may not exceed the source's by more than ``OPEN_TOLERANCE`` (2 points), and the
  myocardium must make at least half of that boundary (the atrium may not wrap the cavity).

Real masks are not always ideal (the phantom's and CAMUS's walls can be cut by the sector edge,
nearest resizing leaves specks), so the structural checks compare with the source instead of
rejecting every deformation of such a mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as connected_components

from cardigan.data.masks import load_extracted_masks

CAVITY, MYOCARDIUM, ATRIUM = 1, 2, 3
FOREGROUND = (CAVITY, MYOCARDIUM, ATRIUM)
AREA_MARGIN = 0.10
MIN_WALL_FRACTION = 0.5
OPEN_TOLERANCE = 0.02
MIN_COMPONENT_FRACTION = 0.01
OUTSIDE_TOLERANCE = 0.01
REASONS = ("missing_label", "fragmented", "area", "outside_field", "cavity_open")
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class AreaRanges:
    """Per-label (min, max) pixel areas allowed in a plausible mask, and where a heart may lie
    (``support``: the union of the real masks' foregrounds, all of one size)."""

    ranges: dict[int, tuple[float, float]]
    support: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_masks(cls, masks, margin: float = AREA_MARGIN) -> AreaRanges:
        """Ranges seen in ``masks`` (an iterable of (H, W) label arrays), widened by ``margin``."""
        lo = {lab: np.inf for lab in FOREGROUND}
        hi = {lab: -np.inf for lab in FOREGROUND}
        n = 0
        support = None
        for m in masks:
            m = np.asarray(m)
            fg = m > 0
            support = fg.copy() if support is None else (support | fg if support.shape == fg.shape
                                                          else support)
            counts = np.bincount(m.ravel(), minlength=max(FOREGROUND) + 1)
            for lab in FOREGROUND:
                lo[lab] = min(lo[lab], counts[lab])
                hi[lab] = max(hi[lab], counts[lab])
            n += 1
        if n == 0:
            raise ValueError("no real masks to take the label-area ranges from")
        return cls({lab: (float(lo[lab]) * (1 - margin), float(hi[lab]) * (1 + margin))
                    for lab in FOREGROUND}, support)

    def to_dict(self) -> dict[str, list[float]]:
        return {str(k): [v[0], v[1]] for k, v in sorted(self.ranges.items())}


@dataclass(frozen=True)
class Topology:
    """Structure of a mask that deformations must not break.

    ``components``: per foreground label, the number of connected components (8-connectivity)
    of at least ``MIN_COMPONENT_FRACTION`` of the label's area (single-pixel specks left by
    nearest-neighbour resizing do not count); ``open_fraction``: the share of the pixels
    4-adjacent to the cavity that are background or outside the image; ``wall_fraction``: the
    share that is myocardium.
    """

    components: dict[int, int]
    open_fraction: float
    wall_fraction: float


#: The ideal heart: one piece per label, cavity enclosed by myocardium and atrium only.
IDEAL = Topology({lab: 1 for lab in FOREGROUND}, 0.0, 1.0)


def topology(mask: np.ndarray) -> Topology:
    components = {}
    for lab in FOREGROUND:
        labelled, n = connected_components(mask == lab, connectivity=2, return_num=True)
        sizes = np.bincount(labelled.ravel())[1:]
        components[lab] = int((sizes >= MIN_COMPONENT_FRACTION * sizes.sum()).sum()) if n else 0
    cavity = np.pad(mask == CAVITY, 1)
    padded = np.pad(mask, 1, constant_values=0)  # the border counts as background
    around = padded[ndimage.binary_dilation(cavity, _CROSS) & ~cavity]
    if around.size == 0:
        return Topology(components, 1.0, 0.0)
    open_fraction = float(np.mean((around != MYOCARDIUM) & (around != ATRIUM)))
    return Topology(components, open_fraction, float(np.mean(around == MYOCARDIUM)))


def check_plausible(mask: np.ndarray, ranges: AreaRanges | None,
                    reference: Topology = IDEAL) -> str | None:
    """None when ``mask`` is a plausible heart, else the first failed check's name (``REASONS``).

    ``reference`` is the source mask's :class:`Topology`: a deformation may not break what the
    source had (real masks are not always ideal: a wall cut by the sector edge leaves the cavity
    touching background, resizing leaves specks), but may not make it worse beyond
    ``OPEN_TOLERANCE``. Without a reference the ideal heart is required.
    """
    counts = np.bincount(mask.ravel(), minlength=max(FOREGROUND) + 1)
    if any(counts[lab] == 0 for lab in FOREGROUND):
        return "missing_label"
    topo = topology(mask)
    if any(topo.components[lab] > max(1, reference.components[lab]) for lab in FOREGROUND):
        return "fragmented"
    if ranges is not None:
        for lab, (lo, hi) in ranges.ranges.items():
            if not lo <= counts[lab] <= hi:
                return "area"
    if ranges is not None and ranges.support is not None and ranges.support.shape == mask.shape:
        fg = mask > 0
        if np.count_nonzero(fg & ~ranges.support) > OUTSIDE_TOLERANCE * np.count_nonzero(fg):
            return "outside_field"
    if topo.open_fraction > reference.open_fraction + OPEN_TOLERANCE:
        return "cavity_open"
    if topo.wall_fraction < min(MIN_WALL_FRACTION, reference.wall_fraction - OPEN_TOLERANCE):
        return "cavity_open"
    return None


def plausibility_record(anno_paths: Sequence[str | Path]) -> dict[str, Any]:
    """What the plausibility checks need from the real train masks, for the generator file's
    ``extra`` (so sampling from user masks needs no training data): the label-area ranges and
    the support (where hearts lie) as a uint8 tensor (``torch.load(weights_only=True)`` safe)."""
    ranges = AreaRanges.from_masks(m.mask for m in load_extracted_masks(anno_paths))
    return {"area_ranges": ranges.to_dict(),
            "support": torch.from_numpy(ranges.support.astype(np.uint8))}


def ranges_from_extra(extra: Mapping[str, Any], path: str | Path) -> AreaRanges:
    """The AreaRanges stored by :func:`plausibility_record` in a generator file's ``extra``."""
    record = extra.get("plausibility")
    if not record:
        raise ValueError(f"{path} holds no plausibility ranges (it was trained before cardiGAN "
                         "stored them): sample without deformations (augment 0), or retrain")
    return AreaRanges({int(k): (float(v[0]), float(v[1]))
                       for k, v in record["area_ranges"].items()},
                      record["support"].numpy().astype(bool))
