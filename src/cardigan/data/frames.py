"""The extracted dataset's on-disk contract, shared by every stage after extract.

Per split and view, two HDF5 files in the original project's form::

    {split}_{view}.h5       patientXXXX_{view}_im_channel{c}   (H, W) uint8
    anno_{split}_{view}.h5  patientXXXX_{view}_gt_channel{c}   (H, W) uint8, labels 0..3

``c`` is 0 for ED and 1 for ES. Every dataset carries the attributes ``spacing``
(row mm, column mm after resizing), ``original_size`` (H, W before resizing) and
``original_spacing`` (row mm, column mm before resizing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cardigan.core import layout
from cardigan.core.labels import INSTANT_CHANNEL

CHANNEL_INSTANT = {c: i for i, c in INSTANT_CHANNEL.items()}
_KEY = re.compile(r"^(?P<patient>.+)_(?P<view>[24]CH)_(?P<kind>im|gt)_channel(?P<channel>\d+)$")


@dataclass(frozen=True)
class Frame:
    """One annotated frame: an image and its mask at one instant of one view."""

    patient: str
    view: str
    instant: str
    image: np.ndarray  # (H, W) uint8
    mask: np.ndarray  # (H, W) uint8
    spacing: tuple[float, float]  # (row mm, column mm) after resizing


def frame_id(patient: str, view: str, instant: str) -> str:
    """``patient_view_instant``: how the generator file's banks name a training frame."""
    return f"{patient}_{view}_{instant}"


def image_key(patient: str, view: str, instant: str) -> str:
    return f"{patient}_{view}_im_channel{INSTANT_CHANNEL[instant]}"


def mask_key(patient: str, view: str, instant: str) -> str:
    return f"{patient}_{view}_gt_channel{INSTANT_CHANNEL[instant]}"


def parse_key(key: str) -> tuple[str, str, str, str]:
    """``patient0001_4CH_im_channel1`` -> ("patient0001", "4CH", "im", "ES")."""
    m = _KEY.match(key)
    if m is None or int(m["channel"]) not in CHANNEL_INSTANT:
        raise ValueError(f"not an extracted-dataset key: {key!r}")
    return m["patient"], m["view"], m["kind"], CHANNEL_INSTANT[int(m["channel"])]


def split_paths(data_dir: str | Path, split: str, view: str) -> tuple[Path, Path]:
    """Image and annotation file of one split and view."""
    return (Path(layout.image_file(split, view, str(data_dir))),
            Path(layout.anno_file(split, view, str(data_dir))))


def iter_frames(images_h5: str | Path, annos_h5: str | Path) -> Iterator[Frame]:
    """Yield the frames of one split/view pair of files, in sorted key order.

    Raises ValueError naming the file and key when the two files do not match.
    """
    with h5py.File(images_h5, "r") as fi, h5py.File(annos_h5, "r") as fa:
        for key in sorted(fi.keys()):
            patient, view, kind, instant = parse_key(key)
            if kind != "im":
                raise ValueError(f"{images_h5}: dataset {key!r} is not an image")
            mkey = mask_key(patient, view, instant)
            if mkey not in fa:
                raise ValueError(f"{annos_h5}: no mask {mkey!r} for image {key!r} of {images_h5}")
            ds = fi[key]
            image = ds[()]
            mask = fa[mkey][()]
            if image.shape != mask.shape:
                raise ValueError(
                    f"{patient} {view} {instant}: image {image.shape} and mask {mask.shape} differ"
                )
            spacing = tuple(float(s) for s in ds.attrs["spacing"])
            yield Frame(patient, view, instant, image, mask, spacing)  # type: ignore[arg-type]


def frame_ids(images_h5: str | Path) -> list[tuple[str, str, str]]:
    """(patient, view, instant) of every image in one file, in :func:`iter_frames` order, from
    the dataset names alone (no pixels read)."""
    with h5py.File(images_h5, "r") as f:
        return [(p, v, i) for p, v, _, i in map(parse_key, sorted(f.keys()))]


def load_frames(
    data_dir: str | Path, split: str, views: Iterable[str], instants: Iterable[str] | None = None
) -> list[Frame]:
    """All frames of one split for the given views (and instants, if given)."""
    keep = set(instants) if instants is not None else None
    frames: list[Frame] = []
    for view in views:
        for frame in iter_frames(*split_paths(data_dir, split, view)):
            if keep is None or frame.instant in keep:
                frames.append(frame)
    return frames


def stack(frames: list[Frame]) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and masks of a list of frames."""
    if not frames:
        raise ValueError("no frames to stack")
    return np.stack([f.image for f in frames]), np.stack([f.mask for f in frames])


def copy_frames(images_h5: str | Path, annos_h5: str | Path, out_images_h5: str | Path,
                out_annos_h5: str | Path, patients: Iterable[str]) -> set[str]:
    """Copy the frames of ``patients`` from one split/view pair of files to a new pair, with the
    files' and datasets' attributes (a subset of a split in the same contract). Returns the
    patients that had frames there."""
    keep = set(patients)
    found: set[str] = set()
    with h5py.File(images_h5, "r") as fi, h5py.File(annos_h5, "r") as fa, \
            h5py.File(out_images_h5, "w") as oi, h5py.File(out_annos_h5, "w") as oa:
        for src, dst in ((fi, oi), (fa, oa)):
            dst.attrs.update(dict(src.attrs))
        for key in sorted(fi.keys()):
            patient, view, _, instant = parse_key(key)
            if patient not in keep:
                continue
            mkey = mask_key(patient, view, instant)
            if mkey not in fa:
                raise ValueError(f"{annos_h5}: no mask {mkey!r} for image {key!r} of {images_h5}")
            fi.copy(fi[key], oi, name=key)
            fa.copy(fa[mkey], oa, name=mkey)
            found.add(patient)
    return found
