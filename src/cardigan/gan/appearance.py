"""How real acquisitions look, measured on the training images and imposed on generated ones.

Two properties of an echocardiogram vary between acquisitions far more than a generator trained
for minutes on a CPU reproduces (docs/styles.md has the measurements):

- **grey levels** -- gain, dynamic range, grey map and image quality set the distribution of grey
  levels inside the imaging field. :class:`GreyLevels` stores each training image's
  distribution; sampling maps a generated image's grey levels onto those of the real image that
  lends its style (histogram matching: order-preserving, so every edge stays where it is).
- **speckle** -- the fine, grainy texture of fully developed speckle. :class:`Speckle` stores the
  strength and grain of the real images' fine-scale texture; sampling adds correlated noise of
  that grain until a generated image's fine-scale texture is as strong as the real images'.

Both are measured at the end of training and stored in the generator file, so sampling needs no
training data. Outside the imaging field (grey levels at or below :data:`FIELD_LEVEL`, the black
around the sector) nothing is changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

#: Grey levels at or below this are outside the imaging field (the black around the sector).
FIELD_LEVEL = 4
GREY_KEY = "grey_levels"
SPECKLE_KEY = "speckle"
#: Values of ``sample.grey_levels`` and ``sample.speckle``.
SOURCES = ("real", "none")
#: The fine scale: the texture is what a Gaussian of this width (pixels) smooths away.
FINE_SIGMA = 2.0
#: Candidate grain widths (pixels, per axis) of the added speckle.
GRAIN_SIGMAS = tuple(np.round(np.arange(0.5, 2.01, 0.125), 3))


def field_of(image: np.ndarray) -> np.ndarray:
    return image > FIELD_LEVEL


@dataclass(frozen=True)
class GreyLevels:
    """Each training image's grey-level distribution inside its imaging field (gain, dynamic
    range, grey map and image quality show there), as a cumulative distribution over the 256
    levels, with the image's id (the ids of the style bank, in the same order)."""

    cdf: torch.Tensor  # (N, 256) float32: fraction of field pixels at or below each level
    ids: tuple[str, ...]

    @classmethod
    def from_images(cls, images: np.ndarray, ids: Sequence[str]) -> GreyLevels:
        """(N, H, W) uint8 training images -> their field CDFs."""
        if len(images) != len(ids):
            raise ValueError(f"{len(images)} images but {len(ids)} ids")
        cdfs = []
        for image, name in zip(images, ids):
            hist = np.bincount(np.asarray(image, np.uint8).ravel(), minlength=256).astype(np.float64)
            hist[: FIELD_LEVEL + 1] = 0
            if hist.sum() == 0:
                raise ValueError(f"training image {name} has no pixel above grey level "
                                 f"{FIELD_LEVEL}: it is blank")
            cdfs.append(np.cumsum(hist) / hist.sum())
        return cls(torch.from_numpy(np.stack(cdfs)).float(), tuple(ids))

    def to_extra(self) -> dict:
        return {"cdf": self.cdf.float().cpu(), "ids": list(self.ids)}

    @classmethod
    def from_extra(cls, extra: dict) -> GreyLevels | None:
        d = extra.get(GREY_KEY)
        if not d:
            return None
        cdf, ids = d["cdf"], tuple(d["ids"])
        if cdf.dim() != 2 or cdf.shape[1] != 256 or cdf.shape[0] != len(ids):
            raise ValueError(f"grey levels of inconsistent shapes: cdf {tuple(cdf.shape)}, "
                             f"{len(ids)} ids")
        return cls(cdf.float(), ids)

    def match(self, image: np.ndarray, index: int) -> np.ndarray:
        """``image`` (H, W) uint8 with the field grey levels of training image ``index``: each
        level goes to the target level at the same quantile."""
        hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
        hist[: FIELD_LEVEL + 1] = 0
        if hist.sum() == 0:
            return image
        cdf = np.cumsum(hist) / hist.sum()
        mid = cdf - hist / hist.sum() / 2  # each level's own pixels at the middle of its step
        target = self.cdf[index].double().numpy()
        # the inverse of the target CDF: the first level at which it reaches each quantile
        lut = np.clip(np.searchsorted(target, mid, side="left"), FIELD_LEVEL + 1, 255)
        lut[: FIELD_LEVEL + 1] = np.arange(FIELD_LEVEL + 1)
        return lut.astype(np.uint8)[image]


def fine_texture(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(residual, where): the image minus its :data:`FINE_SIGMA` smoothing, and the field
    pixels (eroded, so the sector's edge is not texture) where it is measured."""
    x = np.asarray(image, np.float64)
    residual = x - ndimage.gaussian_filter(x, FINE_SIGMA)
    # the smoothing mixes in the black around the field within about 3 sigma of its edge
    where = ndimage.binary_erosion(field_of(image), iterations=int(np.ceil(3 * FINE_SIGMA)))
    return residual, where


def texture_strength(residual: np.ndarray, where: np.ndarray) -> float:
    """Robust std (1.4826 x median absolute deviation) of the fine texture: edges, a minority
    of the field, do not count as speckle."""
    r = residual[where]
    if r.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def texture_correlation(residual: np.ndarray, where: np.ndarray) -> tuple[float, float]:
    """Lag-one autocorrelation of the fine texture down the rows and along them (the grain).
    Pixels beyond three robust stds (edges, not speckle) are left out."""
    limit = 3 * texture_strength(residual, where)
    where = where & (np.abs(residual) <= limit)
    energy = float((residual[where] ** 2).mean()) if where.any() else 0.0
    if energy == 0:
        return 0.0, 0.0
    both_y = where[:-1] & where[1:]
    both_x = where[:, :-1] & where[:, 1:]
    ry = float((residual[:-1] * residual[1:])[both_y].mean()) / energy
    rx = float((residual[:, :-1] * residual[:, 1:])[both_x].mean()) / energy
    return ry, rx


def grain(shape: tuple[int, int], sigma: tuple[float, float], seed: int) -> np.ndarray:
    """Unit-std correlated Gaussian noise: white noise smoothed by ``sigma`` (rows, columns)."""
    white = np.random.default_rng(seed).standard_normal(shape)
    noise = ndimage.gaussian_filter(white, sigma)
    return noise / noise.std()


@dataclass(frozen=True)
class Speckle:
    """The real training images' fine texture: its strength (grey levels, median over the
    images) and the grain (Gaussian widths, rows and columns) of noise with the same
    correlation, with the fine-texture strength of unit-std noise of that grain."""

    strength: float
    sigma: tuple[float, float]
    unit_strength: float

    @classmethod
    def from_images(cls, images: np.ndarray) -> Speckle:
        """Fit on (N, H, W) uint8 training images."""
        if len(images) == 0:
            raise ValueError("no training images to measure the speckle on")
        strengths, corr = [], []
        for image in images:
            residual, where = fine_texture(image)
            strengths.append(texture_strength(residual, where))
            corr.append(texture_correlation(residual, where))
        target = np.mean(corr, axis=0)
        shape = images.shape[1:]
        best = None
        for sy in GRAIN_SIGMAS:
            for sx in GRAIN_SIGMAS:
                residual, where = fine_texture(grain(shape, (sy, sx), seed=0) * 50 + 128)
                err = float(np.sum((np.array(texture_correlation(residual, where)) - target) ** 2))
                if best is None or err < best[0]:
                    best = (err, (float(sy), float(sx)), texture_strength(residual, where) / 50)
        _, sigma, unit = best
        return cls(float(np.median(strengths)), sigma, float(unit))

    def to_extra(self) -> dict:
        return {"strength": self.strength, "sigma": list(self.sigma),
                "unit_strength": self.unit_strength}

    @classmethod
    def from_extra(cls, extra: dict) -> Speckle | None:
        d = extra.get(SPECKLE_KEY)
        if not d:
            return None
        return cls(float(d["strength"]), (float(d["sigma"][0]), float(d["sigma"][1])),
                   float(d["unit_strength"]))

    def add(self, image: np.ndarray, seed: int) -> np.ndarray:
        """``image`` (H, W) uint8 with noise of the real grain added inside the field, as much
        as brings its fine texture up to the real images' strength (none if it has that)."""
        residual, where = fine_texture(image)
        have = texture_strength(residual, where)
        amount = np.sqrt(max(0.0, self.strength ** 2 - have ** 2)) / self.unit_strength
        if amount == 0:
            return image
        field = field_of(image)
        noisy = image + amount * grain(image.shape, self.sigma, seed)
        out = image.copy()
        out[field] = np.clip(np.round(noisy[field]), FIELD_LEVEL + 1, 255).astype(np.uint8)
        return out


@dataclass(frozen=True)
class Appearance:
    """What sampling imposes (``sample.grey_levels``, ``sample.speckle``); None: not imposed."""

    grey: GreyLevels | None = None
    speckle: Speckle | None = None

    @classmethod
    def measure(cls, images: np.ndarray, ids: Sequence[str]) -> Appearance:
        """Both records of the training images (the end of training)."""
        return cls(GreyLevels.from_images(images, ids), Speckle.from_images(images))

    def to_extra(self) -> dict:
        out = {}
        if self.grey is not None:
            out[GREY_KEY] = self.grey.to_extra()
        if self.speckle is not None:
            out[SPECKLE_KEY] = self.speckle.to_extra()
        return out

    @classmethod
    def for_sampling(cls, grey_levels: str, speckle: str, extra: dict, path: object) -> Appearance:
        """The records a generator file's ``extra`` holds for the sampling settings, or a clear
        error naming the config key where the file lacks one."""
        found = {}
        for key, setting, reader, record in (
                ("sample.grey_levels", grey_levels, GreyLevels, "grey levels"),
                ("sample.speckle", speckle, Speckle, "speckle")):
            if setting not in SOURCES:
                raise ValueError(f"config key {key}: {setting!r} is not one of {list(SOURCES)}")
            found[key] = None
            if setting == "real":
                try:
                    found[key] = reader.from_extra(extra)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise ValueError(f"{path}: its {record} record is damaged ({exc!r}): "
                                     f"retrain, or set {key}: none") from exc
                if found[key] is None:
                    raise ValueError(
                        f"{path} stores no {record} of its training images (it was trained "
                        f"before cardiGAN stored them): set {key}: none, or retrain")
        return cls(found["sample.grey_levels"], found["sample.speckle"])

    def apply(self, image: np.ndarray, grey_index: int | None, speckle_seed: int) -> np.ndarray:
        """Speckle first (at the generator's grey scale), then the grey levels of training
        image ``grey_index``, which scale the speckle as they scale everything else."""
        if self.speckle is not None:
            image = self.speckle.add(image, speckle_seed)
        if self.grey is not None and grey_index is not None:
            image = self.grey.match(image, grey_index)
        return image
