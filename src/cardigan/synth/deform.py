"""Novel anatomies: random affine + smooth elastic deformation of masks, with plausibility checks.

A deformation is fully described by a small JSON-able dict (rotation, scale, translation and the
seed of the elastic field), so every synthetic sample can record how its mask was made and the
mask can be rebuilt with :func:`deform_mask`. Draws are seeded from ``(seed, source index,
variant, try)``, so the result for a mask does not depend on batch size or on the other masks.

Plausibility: :mod:`cardigan.data.plausibility`.
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

from cardigan.core.defaults import default
from cardigan.data.plausibility import REASONS, AreaRanges, check_plausible, topology

log = logging.getLogger("cardigan")




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
