"""The evaluation's inputs as arrays: real frames of a split, and the synthetic export's rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cardigan.data.frames import frame_id, load_frames


@dataclass(frozen=True)
class ImageSet:
    """N images with their masks, (row, column) spacings in mm, instants, views and groups.

    ``group`` names the mask an image was made from: images of one group share their mask (the
    several styles of one synthetic mask); a real frame is its own group."""

    images: np.ndarray  # (N, H, W) uint8
    masks: np.ndarray  # (N, H, W) uint8 labels 0..3
    spacing: np.ndarray  # (N, 2) float64
    instant: np.ndarray  # (N,) str
    view: np.ndarray  # (N,) str
    group: np.ndarray  # (N,) str
    quality: np.ndarray  # (N,) str: the frame's ImageQuality (Good, Medium, Poor), "" if none

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def concat(a: ImageSet, b: ImageSet) -> ImageSet:
        return ImageSet(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in
                          ("images", "masks", "spacing", "instant", "view", "group",
                           "quality")))


def load_real(data_dir: str | Path, split: str, views: Iterable[str]) -> ImageSet:
    """Every frame of one extracted split, for the given views."""
    frames = load_frames(data_dir, split, list(views))
    grades = _image_quality(Path(data_dir))
    if not frames:
        raise ValueError(f"{data_dir}: the {split} split has no frames for views {list(views)}")
    return ImageSet(
        images=np.stack([f.image for f in frames]),
        masks=np.stack([f.mask for f in frames]),
        spacing=np.array([f.spacing for f in frames], dtype=np.float64),
        instant=np.array([f.instant for f in frames]),
        view=np.array([f.view for f in frames]),
        group=np.array([f"{split}:{frame_id(f.patient, f.view, f.instant)}" for f in frames]),
        quality=np.array([grades.get((f.patient, f.view, f.instant), "") for f in frames]),
    )


def _image_quality(data_dir: Path) -> dict[tuple[str, str, str], str]:
    """(patient, view, instant) -> ImageQuality, from the extracted metadata.csv (empty without
    one, or where CAMUS left it blank)."""
    path = data_dir / "metadata.csv"
    if not path.is_file():
        return {}
    meta = pd.read_csv(path, usecols=["patient", "view", "instant", "image_quality"], dtype=str,
                       keep_default_na=False)
    return {(r.patient, r.view, r.instant): r.image_quality for r in meta.itertuples()}


def _strings(ds: h5py.Dataset) -> np.ndarray:
    values = ds[()]
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])


def load_synthetic(path: str | Path) -> ImageSet:
    """The generated rows (``is_synthetic`` true) of the export's HDF5 file.

    Real frames the export may include (``export.include_real``) are left out: the synthetic
    setting must see generated images only.
    """
    needed = ("images", "masks", "spacing", "instant", "view", "is_synthetic")
    with h5py.File(path, "r") as f:
        absent = [k for k in needed if k not in f]
        if absent:
            raise ValueError(f"{path}: missing dataset(s) {absent} of the export contract")
        keep = np.asarray(f["is_synthetic"][()], dtype=bool)
        n = len(keep)
        for k in needed:
            if len(f[k]) != n:
                raise ValueError(f"{path}: dataset {k!r} has {len(f[k])} rows, is_synthetic has {n}")
        images = f["images"][()]
        masks = f["masks"][()]
        if images.ndim != 3 or images.dtype != np.uint8 or masks.shape != images.shape:
            raise ValueError(f"{path}: images {images.shape} {images.dtype} and masks {masks.shape} "
                             "must be equal (N, H, W) uint8")
        if masks.size and masks.max() > 3:
            raise ValueError(f"{path}: masks hold label {int(masks.max())}, expected 0..3")
        spacing = np.asarray(f["spacing"][()], dtype=np.float64)
        instant = _strings(f["instant"])
        view = _strings(f["view"])
        # Rows made from one mask share source, patient, view, instant and variant.
        parts = [_strings(f[k]) if k in f else np.full(n, "") for k in
                 ("source", "source_patient")] + [instant, view]
        variant = f["variant"][()].astype(str) if "variant" in f else np.arange(n).astype(str)
        group = np.array(["/".join(t) for t in zip(*parts, variant)])
    if not keep.any():
        raise ValueError(f"{path}: no row has is_synthetic true: there are no generated images")
    return ImageSet(images[keep], masks[keep], spacing[keep], instant[keep], view[keep],
                    group[keep], np.full(int(keep.sum()), ""))
