"""Pseudo-labels of the anatomy CAMUS leaves unlabelled, taken from the training images themselves.

CAMUS labels the left ventricle, its wall and the left atrium; the right ventricle and atrium,
the septum's far side, valves and pericardium are all "background". A generator conditioned on
four labels has nothing that says where the right heart's dark chambers lie, so it blurs them,
and a segmenter trained on its images takes any dark chamber near the mitral plane for the left
atrium. With ``train.background_classes: k`` the background inside the ultrasound fan is split
into ``k`` brightness classes of the image it belongs to (multi-Otsu on the smoothed image: dark
blood, tissue in between, bright walls and pericardium), which become labels
``label_nc .. label_nc + k - 1`` of the map the networks are conditioned on. Nothing here comes
from how the images were made: only from each image's own grey levels.

Sampling needs such a map for every mask it draws. The generator file carries the training
frames' maps (:class:`BackgroundBank`): a mask of the train split takes its own frame's map; any
other mask (a user mask, another split, a deformation's source) borrows the background of the
training frame whose labels overlap it best, and a deformation moves it with the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_multiotsu
from skimage.morphology import convex_hull_image

#: The generator file's ``extra`` key of the bank.
BACKGROUND_KEY = "background_bank"
#: Smoothing of the image before its background is split, as a fraction of the image side: wide
#: enough to average speckle away, narrow against a chamber (CAMUS's speckle grain is a few pixels
#: at 256, a right atrium tens).
SMOOTH_FRACTION = 1 / 100
#: The bank's largest size in the generator file; more frames are stored at a coarser grid.
BANK_BYTES = 16 * 2**20


def fan(image: np.ndarray) -> np.ndarray:
    """The ultrasound fan: the convex hull of the nonzero pixels (scan conversion leaves zeros
    outside it; a fan is convex, so near-black chambers inside it stay inside)."""
    nonzero = image > 0
    if not nonzero.any():
        return nonzero
    return convex_hull_image(nonzero, offset_coordinates=False)


def condition_map(image: np.ndarray, mask: np.ndarray, classes: int, label_nc: int) -> np.ndarray:
    """(H, W) uint8: ``mask``'s labels, its background inside the fan relabelled by brightness
    (``label_nc`` darkest .. ``label_nc + classes - 1`` brightest); outside the fan stays 0."""
    out = mask.astype(np.uint8).copy()
    if classes == 0:
        return out
    inside = fan(image)
    region = inside & (mask == 0)
    if not region.any():
        return out
    # normalised by the smoothed fan: the zeros outside it must not darken its edge
    sigma = SMOOTH_FRACTION * image.shape[0]
    weight = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
    smooth = ndimage.gaussian_filter(np.where(inside, image, 0).astype(np.float32), sigma)
    smooth = smooth / np.maximum(weight, 1e-6)
    values = smooth[region]
    level = np.zeros(values.shape, dtype=np.int64)
    if classes > 1 and np.ptp(values) >= 1.0:  # less than a grey level: nothing to split
        try:
            thresholds = threshold_multiotsu(values, classes=classes)
        except ValueError:  # too few distinct levels for multi-Otsu: equal shares instead
            thresholds = np.quantile(values, np.arange(1, classes) / classes)
        level = np.digitize(values, thresholds)
    out[region] = (label_nc + level).astype(np.uint8)
    return out


def condition_maps(images: np.ndarray, masks: np.ndarray, classes: int, label_nc: int
                   ) -> np.ndarray:
    """:func:`condition_map` of every (image, mask) pair: (N, H, W) uint8."""
    if classes == 0:
        return masks
    return np.stack([condition_map(i, m, classes, label_nc) for i, m in zip(images, masks)])


def _bank_factor(n: int, size: int) -> int:
    factor = 1
    while n * (size // factor) ** 2 > BANK_BYTES and size // factor > 16:
        factor *= 2
    return factor


@dataclass(frozen=True)
class BackgroundBank:
    """The training frames' condition maps, stored in the generator file, and how any mask gets
    one (:meth:`for_mask`)."""

    maps: np.ndarray  # (N, h, w) uint8 condition maps, h = image_size // factor
    ids: tuple[str, ...]  # patient_view_instant of each map (cardigan.data.frames.frame_id)
    factor: int  # maps are subsampled by this factor (1: full size)
    label_nc: int  # the generator's (ModelConfig.label_nc): labels below it are structures

    @classmethod
    def build(cls, maps: np.ndarray, ids: Sequence[str], label_nc: int) -> BackgroundBank:
        if len(maps) != len(ids):
            raise ValueError(f"{len(maps)} condition maps but {len(ids)} frame ids")
        factor = _bank_factor(len(maps), maps.shape[-1])
        return cls(np.ascontiguousarray(maps[:, ::factor, ::factor]), tuple(ids), factor,
                   label_nc)

    def to_extra(self) -> dict:
        return {BACKGROUND_KEY: {"maps": torch.from_numpy(self.maps.copy()), "ids": list(self.ids),
                                 "factor": self.factor}}

    @cached_property
    def structures(self) -> np.ndarray:
        """The maps' labelled structures alone (background classes as 0), for matching masks."""
        return np.where(self.maps < self.label_nc, self.maps, 0)

    @classmethod
    def from_extra(cls, extra: dict, label_nc: int, path: object = "the generator file"
                   ) -> BackgroundBank:
        d = extra.get(BACKGROUND_KEY)
        if not d:
            raise ValueError(f"{path}: the generator was trained with train.background_classes "
                             "but its file holds no background bank (it was written by an "
                             "incomplete run): retrain it")
        maps = d["maps"].numpy().astype(np.uint8)
        if maps.ndim != 3 or len(d["ids"]) != len(maps):
            raise ValueError(f"{path}: background bank of inconsistent shapes: maps "
                             f"{maps.shape}, {len(d['ids'])} ids")
        return cls(maps, tuple(d["ids"]), int(d["factor"]), label_nc)

    def donor(self, mask: np.ndarray, frame_id: str | None = None) -> int:
        """Index of the map that lends ``mask`` its background: its own frame's when ``frame_id``
        is a training frame with these labels, else the frame whose labels overlap it best (mean
        Dice over the labelled structures)."""
        small = mask[::self.factor, ::self.factor]
        fg = self.structures
        if frame_id is not None and frame_id in self.ids:
            j = self.ids.index(frame_id)
            if np.array_equal(fg[j], small):
                return j
        scores = np.zeros(len(self.maps))
        for label in range(1, self.label_nc):
            a, b = fg == label, small == label
            denom = a.sum(axis=(1, 2)) + b.sum()
            inter = (a & b).sum(axis=(1, 2))
            scores += np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
        return int(np.argmax(scores))

    def for_mask(self, mask: np.ndarray, frame_id: str | None = None) -> tuple[np.ndarray, str]:
        """(the condition map of ``mask`` at its size, the id of the frame that lent it). The
        mask's own labels are kept; its background takes the donor's classes, and where the donor
        had a structure the nearest of the donor's background classes."""
        j = self.donor(mask, frame_id)
        donor = self.maps[j]
        if self.factor > 1:
            donor = np.repeat(np.repeat(donor, self.factor, 0), self.factor, 1)
            donor = donor[:mask.shape[0], :mask.shape[1]]
        structure = (donor > 0) & (donor < self.label_nc)
        if structure.any() and not structure.all():
            _, (iy, ix) = ndimage.distance_transform_edt(structure, return_indices=True)
            donor = donor[iy, ix]
        out = np.where(mask > 0, mask, donor).astype(np.uint8)
        return out, self.ids[j]
