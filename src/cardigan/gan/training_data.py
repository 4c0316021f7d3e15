"""The train split in memory: its frames checked before any training, their ids and content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cardigan.data.frames import frame_id, iter_frames, mask_key


def load_training_data(
    images_h5: Sequence[str | Path], annos_h5: Sequence[str | Path], *, image_size: int,
    label_nc: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and masks of the train split, checked before any training.

    Raises ValueError naming the file, dataset key and value for a frame of the wrong size or a
    mask value >= ``label_nc`` (the reference failed later with an opaque scatter error).
    """
    if len(images_h5) != len(annos_h5) or not images_h5:
        raise ValueError(f"train needs matching image/annotation files, got {list(images_h5)} "
                         f"and {list(annos_h5)}")
    images, masks = [], []
    for img_path, ann_path in zip(images_h5, annos_h5):
        for f in iter_frames(img_path, ann_path):
            key = mask_key(f.patient, f.view, f.instant)
            if f.image.shape != (image_size, image_size):
                raise ValueError(
                    f"{img_path}: frame {f.patient} {f.view} {f.instant} is {f.image.shape[0]}x"
                    f"{f.image.shape[1]} but data.image_size is {image_size}: re-run extract"
                )
            if f.image.dtype != np.uint8 or f.mask.dtype != np.uint8:
                raise ValueError(f"{img_path}/{ann_path}: {key} is not uint8 "
                                 f"({f.image.dtype}, {f.mask.dtype})")
            top = int(f.mask.max())
            if top >= label_nc:
                raise ValueError(
                    f"{ann_path}: mask {key} ({f.patient} {f.view} {f.instant}) has label value "
                    f"{top} >= train.label_nc={label_nc}; labels must be 0..{label_nc - 1} "
                    f"(raise train.label_nc or fix the masks)"
                )
            images.append(f.image)
            masks.append(f.mask)
    if not images:
        raise ValueError(f"no frames in {list(images_h5)}")
    return np.stack(images), np.stack(masks)


def training_frame_ids(images_h5: Sequence[str | Path], annos_h5: Sequence[str | Path]
                       ) -> list[str]:
    """``patient_view_instant`` of every training frame, in :func:`load_training_data` order."""
    return [frame_id(f.patient, f.view, f.instant)
            for img, ann in zip(images_h5, annos_h5) for f in iter_frames(img, ann)]


def data_sha256(images: np.ndarray, masks: np.ndarray) -> str:
    """Content hash of the training data, in training order (part of the state fingerprint)."""
    h = hashlib.sha256()
    for a in (images, masks):
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
