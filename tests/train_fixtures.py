"""Small synthetic training data in the extracted-dataset format (results/data/*.h5), for the
training tests: a bright ring (label 2) around a dark disc (label 1) with a blob (label 3)
above it, the image's intensity following the labels plus noise."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cardigan.data.frames import image_key, mask_key, split_paths


def synthetic_frame(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = 0.55 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    r = np.hypot(yy - cy, xx - cx)
    rad = rng.uniform(0.15, 0.22)
    mask = np.zeros((size, size), np.uint8)
    mask[r < rad + 0.06] = 2
    mask[r < rad] = 1
    mask[np.hypot(yy - (cy - rad - 0.15), xx - cx) < 0.08] = 3
    level = np.array([60, 20, 200, 40], np.float64)[mask]
    image = np.clip(level + rng.normal(0, 12, mask.shape), 0, 255).astype(np.uint8)
    return image, mask


def write_split(data_dir: str | Path, *, patients: int, size: int, view: str = "4CH",
                split: str = "train", seed: int = 0, bad_label: int | None = None,
                first: int = 1) -> tuple[Path, Path]:
    """Write {split}_{view}.h5 and anno_{split}_{view}.h5 with ED and ES of ``patients``
    (numbered from ``first``)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    img_path, ann_path = split_paths(data_dir, split, view)
    rng = np.random.default_rng(seed)
    with h5py.File(img_path, "w") as fi, h5py.File(ann_path, "w") as fa:
        for p in range(patients):
            patient = f"patient{p + first:04d}"
            for instant in ("ED", "ES"):
                image, mask = synthetic_frame(rng, size)
                if bad_label is not None and p == patients - 1 and instant == "ES":
                    mask[0, 0] = bad_label
                for f, key, arr in ((fi, image_key(patient, view, instant), image),
                                    (fa, mask_key(patient, view, instant), mask)):
                    ds = f.create_dataset(key, data=arr)
                    ds.attrs["spacing"] = (0.3, 0.3)
                    ds.attrs["original_size"] = (size, size)
                    ds.attrs["original_spacing"] = (0.3, 0.3)
    return img_path, ann_path


def field_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size) uint8 images with an imaging field: black outside a disc, uniform random
    grey levels in a random range inside (each image its own gain and contrast)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(yy - size / 2, xx - size / 2) < 0.44 * size
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        lo, hi = sorted(rng.integers(10, 250, 2))
        out[i][inside] = rng.integers(lo, hi + 1, inside.sum())
    return out
