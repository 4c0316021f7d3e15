"""Mask sources for sampling: extracted splits, a folder of user masks, or an HDF5 file of masks.

Every source yields :class:`SourceMask` records that are validated the same way before any
image is generated: label values must be CAMUS labels (``labels.LABELS``) and below the
generator's ``label_nc``, and the size must be the generator's ``image_size``. Extracted masks
must already have that size (a mismatch means the checkpoint does not belong to this data);
user masks of another size are resized with nearest neighbour (labels stay labels) and the
resize is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from skimage.transform import resize

from cardigan.core.labels import LABELS
from cardigan.data.frames import parse_key

log = logging.getLogger("cardigan")

#: Suffixes read from a folder of user masks (SimpleITK reads all of them).
USER_MASK_SUFFIXES = (".nii.gz", ".nii", ".png", ".mha", ".nrrd")
UNKNOWN = "unknown"


class MaskError(ValueError):
    """A mask source is unusable; the message names the file (and patient) and what is wrong."""


@dataclass(frozen=True)
class SourceMask:
    """One conditioning mask and where it came from."""

    source: str  # "train" / "valid" / "test" for extracted splits, "user" for mask_path
    patient: str
    view: str
    instant: str
    mask: np.ndarray  # (H, W) uint8
    spacing: tuple[float, float]  # (row mm, column mm); NaN when the file has none (PNG)
    origin: str  # file (and key) it was read from, for error messages


def _name_fields(stem: str) -> tuple[str, str]:
    """View and instant guessed from a file name like ``patient0001_4CH_ED_gt``."""
    parts = stem.upper().replace("-", "_").split("_")
    view = next((v for v in ("2CH", "4CH") if v in parts), UNKNOWN)
    instant = next((i for i in ("ED", "ES") if i in parts), UNKNOWN)
    return view, instant


def load_extracted_masks(anno_paths: Iterable[str | Path]) -> list[SourceMask]:
    """Masks of extracted ``anno_{split}_{view}.h5`` files, in file order then sorted key order."""
    out: list[SourceMask] = []
    for path in anno_paths:
        path = Path(path)
        split = path.stem.split("_")[1] if path.stem.startswith("anno_") else path.stem
        with h5py.File(path, "r") as f:
            for key in sorted(f.keys()):
                try:
                    patient, view, kind, instant = parse_key(key)
                except ValueError as err:
                    raise MaskError(f"{path}: {err}") from None
                if kind != "gt":
                    raise MaskError(f"{path}: dataset {key!r} is not a mask (expected *_gt_channel*)")
                ds = f[key]
                spacing = tuple(float(s) for s in ds.attrs.get("spacing", (np.nan, np.nan)))
                out.append(
                    SourceMask(split, patient, view, instant, np.asarray(ds[()], dtype=np.uint8),
                               spacing, f"{path}:{key}")  # type: ignore[arg-type]
                )
    return out


def _read_user_file(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    # Imported here: the generator, training and the benchmarks use this module's masks without
    # reading image files, and run where the imaging stack is not installed (the GPU check).
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:  # SimpleITK's message starts with its C++ source location
        reason = str(err).strip().splitlines()[-1].split(": ", 1)[-1].strip() or "unreadable"
        raise MaskError(f"{path}: not a readable {path.suffix.lstrip('.').upper()} image "
                        f"({reason})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise MaskError(
            f"{path}: has {img.GetNumberOfComponentsPerPixel()} channels per pixel; a mask must be a "
            "single-channel label image (values 0..3), not an RGB picture"
        )
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 3 and arr.shape[0] == 1:  # a 2D frame stored as one slice
        arr = arr[0]
    if arr.ndim != 2:
        raise MaskError(f"{path}: a mask must be 2D (H, W) or one slice, got shape {arr.shape}")
    if path.suffix.lower() == ".png":
        spacing = (np.nan, np.nan)  # PNG has no physical spacing
    else:
        sx, sy = img.GetSpacing()[:2]  # ITK order is (column, row)
        spacing = (float(sy), float(sx))
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise MaskError(f"{path}: mask holds non-integer values (dtype {arr.dtype})")
    return arr, spacing


def _read_mask_h5(path: Path) -> list[SourceMask]:
    """An HDF5 of masks: either a ``masks`` (N, H, W) dataset (as in synthetic.h5, with optional
    ``source_patient``/``view``/``instant``/``spacing``) or the extracted ``*_gt_channel*`` layout."""
    with h5py.File(path, "r") as f:
        if "masks" not in f:
            return [
                SourceMask("user", m.patient, m.view, m.instant, m.mask, m.spacing, m.origin)
                for m in load_extracted_masks([path])
            ]
        masks = f["masks"]
        if masks.ndim != 3:
            raise MaskError(f"{path}: dataset 'masks' must be (N, H, W), got shape {masks.shape}")
        n = masks.shape[0]

        def column(name: str, default):
            if name not in f:
                return [default] * n
            values = f[name][()]
            return [v.decode() if isinstance(v, bytes) else v for v in values]

        patients = column("source_patient", None)
        views = column("view", UNKNOWN)
        instants = column("instant", UNKNOWN)
        spacings = f["spacing"][()] if "spacing" in f else np.full((n, 2), np.nan)
        return [
            SourceMask("user", patients[i] or f"{path.stem}_{i:05d}", views[i], instants[i],
                       np.asarray(masks[i], dtype=np.uint8),
                       (float(spacings[i][0]), float(spacings[i][1])), f"{path}:masks[{i}]")
            for i in range(n)
        ]


def load_user_masks(mask_path: str | Path) -> list[SourceMask]:
    """Masks of ``sample.mask_path``: a folder of NIfTI/PNG/MHA/NRRD files or one HDF5 file."""
    path = Path(mask_path)
    if not path.exists():
        raise MaskError(f"config key sample.mask_path: {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in (".h5", ".hdf5"):
            raise MaskError(f"sample.mask_path {path}: a file must be HDF5 (.h5); use a folder for "
                            "NIfTI or PNG masks")
        return _read_mask_h5(path)
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.name.lower().endswith(USER_MASK_SUFFIXES))
    out = []
    for p in files:
        arr, spacing = _read_user_file(p)
        stem = p.name
        for suffix in USER_MASK_SUFFIXES:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        view, instant = _name_fields(stem)
        if np.any(arr < 0) or np.any(arr > 255):
            raise MaskError(f"{p}: label values outside 0..255 ({arr.min()}..{arr.max()})")
        out.append(SourceMask("user", stem, view, instant, arr.astype(np.uint8), spacing, str(p)))
    return out


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to (size, size): labels stay labels."""
    out = resize(mask, (size, size), order=0, preserve_range=True, anti_aliasing=False)
    return out.astype(np.uint8)


def validate_masks(masks: Sequence[SourceMask], label_nc: int, image_size: int,
                   what: str = "mask source") -> list[SourceMask]:
    """Check label values and sizes against the generator; returns the (possibly resized) masks.

    Raises MaskError naming the file/patient: when there are no masks, when a value is not a CAMUS
    label or not below ``label_nc``, or when an extracted mask's size differs from ``image_size``
    (user masks are resized with nearest neighbour instead, with a log line).
    """
    if not masks:
        raise MaskError(f"{what}: no masks found (empty source)")
    allowed = sorted(v for v in LABELS if v < label_nc)
    out = []
    resized = 0
    for m in masks:
        values = np.unique(m.mask)
        bad = [int(v) for v in values if int(v) not in allowed]
        if bad:
            raise MaskError(
                f"{m.origin} ({m.patient} {m.view} {m.instant}): label values {bad} are not allowed; "
                f"the generator knows labels {allowed} (label_nc={label_nc}, CAMUS labels "
                f"{sorted(LABELS)})"
            )
        if not np.any(m.mask):
            raise MaskError(f"{m.origin} ({m.patient} {m.view} {m.instant}): the mask is all "
                            "background: there is no heart to draw an image of")
        if m.mask.shape != (image_size, image_size):
            if m.source != "user":
                raise MaskError(
                    f"{m.origin}: mask is {m.mask.shape[0]}x{m.mask.shape[1]} but the generator "
                    f"makes {image_size}x{image_size} images: the checkpoint was trained at another "
                    "data.image_size (re-run train, or extract at the generator's size)"
                )
            h, w = m.mask.shape
            spacing = (m.spacing[0] * h / image_size, m.spacing[1] * w / image_size)
            m = SourceMask(m.source, m.patient, m.view, m.instant,
                           resize_nearest(m.mask, image_size), spacing, m.origin)  # type: ignore[arg-type]
            resized += 1
        out.append(m)
    if resized:
        log.info("%s: resized %d user masks to %dx%d with nearest neighbour", what, resized,
                 image_size, image_size)
    return out


def toy_heart_mask(size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A simple apical-view mask (apex at the top): LV cavity inside a myocardial wall that is open
    at the mitral plane, where the left atrium sits below. For tests and benchmarks that need
    plausible masks without running the phantom stage; ``rng`` jitters the shape."""
    j = (lambda: 1.0) if rng is None else (lambda: float(rng.uniform(0.9, 1.1)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    cy, cx = 0.40 * j(), 0.5 * (0.5 + 0.5 * j())
    a, b, t = 0.24 * j(), 0.11 * j(), 0.05 * j()
    mitral = cy + 0.75 * a
    inner = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
    outer = ((yy - cy) / (a + t)) ** 2 + ((xx - cx) / (b + t)) ** 2 <= 1
    above = yy < mitral
    la_cy, la_a, la_b = mitral + 0.06 * j(), 0.13 * j(), 0.13 * j()
    atrium = (((yy - la_cy) / la_a) ** 2 + ((xx - cx) / la_b) ** 2 <= 1) & ~above
    mask = np.zeros((size, size), np.uint8)
    mask[outer & above] = 2
    mask[inner & above] = 1
    mask[atrium] = 3
    return mask


BENCH_MASKS = ("heart", "blocky")


def bench_masks(kind: str, n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size) uint8 label maps for benchmarks: ``heart`` (:func:`toy_heart_mask`,
    jittered: label edges like the training masks') or ``blocky`` (a random label per cell of an
    8x8 grid: far more edge pixels). Speed of the SPADE layers on the CPU depends on the share
    of pixels near a label edge, so a benchmark says which it used."""
    rng = np.random.default_rng(seed)
    if kind == "heart":
        return np.stack([toy_heart_mask(size, rng) for _ in range(n)])
    if kind == "blocky":
        cells = rng.integers(0, 4, (n, 8, 8)).astype(np.uint8)
        return cells.repeat(-(-size // 8), 1).repeat(-(-size // 8), 2)[:, :size, :size]
    raise ValueError(f"unknown mask kind {kind!r}: one of {', '.join(BENCH_MASKS)}")
