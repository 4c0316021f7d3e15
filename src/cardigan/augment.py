"""Novel anatomies: random affine + smooth elastic deformation of masks, with plausibility checks.

A deformation is fully described by a small JSON-able dict (rotation, scale, translation and the
seed of the elastic field), so every synthetic sample can record how its mask was made and the
mask can be rebuilt with :func:`deform_mask`. Draws are seeded from ``(seed, source index,
variant, try)``, so the result for a mask does not depend on batch size or on the other masks.

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

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components

from .defaults import default

log = logging.getLogger("cardigan")

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
class AugmentConfig:
    """``sample.augment`` of the config; field defaults are the schema's."""

    n: int = default("sample", "augment", "n")
    rotation_deg: float = default("sample", "augment", "rotation_deg")
    scale: tuple[float, float] = default("sample", "augment", "scale")
    translation: float = default("sample", "augment", "translation")
    elastic_alpha: float = default("sample", "augment", "elastic_alpha")
    elastic_sigma: float = default("sample", "augment", "elastic_sigma")
    max_tries: int = default("sample", "augment", "max_tries")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentConfig:
        d = dict(d)
        if "scale" in d:
            d["scale"] = tuple(float(s) for s in d["scale"])
        return cls(**d)


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


def item_seed(*key: int) -> int:
    """A non-negative int64 seed derived from integers (e.g. seed, source index, variant)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def draw_params(cfg: AugmentConfig, seed: int) -> dict[str, Any]:
    """The parameters of one random deformation (JSON-able)."""
    rng = np.random.default_rng(seed)
    return {
        "rotation_deg": float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)),
        "scale": float(rng.uniform(cfg.scale[0], cfg.scale[1])),
        "translation": [float(v) for v in rng.uniform(-cfg.translation, cfg.translation, size=2)],
        "elastic_alpha": float(cfg.elastic_alpha),
        "elastic_sigma": float(cfg.elastic_sigma),
        "elastic_seed": int(rng.integers(0, 2**63 - 1)),
    }


def _elastic_field(shape: tuple[int, int], alpha: float, sigma: float, seed: int) -> np.ndarray:
    """(2, H, W) smooth displacement in pixels; each component's largest magnitude is ``alpha``."""
    rng = np.random.default_rng(seed)
    field = np.empty((2, *shape))
    for c in range(2):
        f = ndimage.gaussian_filter(rng.uniform(-1, 1, size=shape), sigma, mode="reflect")
        peak = np.abs(f).max()
        field[c] = f * (alpha / peak) if peak > 0 else 0.0
    return field


def deform_mask(mask: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Apply a deformation described by :func:`draw_params` with nearest-neighbour resampling.

    Output pixel p samples the input at ``A^-1(p + d(p))``: the elastic displacement ``d`` is
    applied in output space, then the inverse of the affine (rotation and scale about the image
    centre, then translation as a fraction of the size). Outside the image is background.
    """
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if params["elastic_alpha"] > 0:
        d = _elastic_field((h, w), params["elastic_alpha"], params["elastic_sigma"],
                           params["elastic_seed"])
        yy, xx = yy + d[0], xx + d[1]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ty, tx = params["translation"][0] * h, params["translation"][1] * w
    theta = np.deg2rad(params["rotation_deg"])
    s = params["scale"]
    # inverse affine: undo translation, rotate by -theta, divide by scale (about the centre)
    y0, x0 = yy - cy - ty, xx - cx - tx
    cos, sin = np.cos(theta), np.sin(theta)
    src_y = (cos * y0 + sin * x0) / s + cy
    src_x = (-sin * y0 + cos * x0) / s + cx
    out = ndimage.map_coordinates(mask, [src_y, src_x], order=0, mode="constant", cval=0)
    return out.astype(np.uint8)


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


@dataclass
class DeformStats:
    """Counts of rejected draws per reason, and deformations given up after max_tries."""

    rejected: Counter = field(default_factory=lambda: Counter({r: 0 for r in REASONS}))
    exhausted: int = 0
    source_implausible: int = 0
    accepted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(sorted(self.rejected.items())),
                "exhausted": self.exhausted, "source_implausible": self.source_implausible}


def deformed_variant(mask: np.ndarray, cfg: AugmentConfig, ranges: AreaRanges | None, seed: int,
                     source_index: int, variant: int, stats: DeformStats
                     ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The ``variant``-th (1-based) plausible deformation of a source mask, or None when
    ``cfg.max_tries`` draws were all rejected (counted in ``stats.exhausted``)."""
    reference = topology(mask)
    for attempt in range(cfg.max_tries):
        params = draw_params(cfg, item_seed(seed, source_index, variant, attempt))
        out = deform_mask(mask, params)
        reason = check_plausible(out, ranges, reference)
        if reason is None:
            stats.accepted += 1
            params["attempt"] = attempt
            return out, params
        stats.rejected[reason] += 1
    stats.exhausted += 1
    return None


def params_json(params: Mapping[str, Any]) -> str:
    """Canonical JSON of deformation parameters (what synthetic.h5 stores per sample)."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
