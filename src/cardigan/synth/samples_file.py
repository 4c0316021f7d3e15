"""samples.h5, the sample stage's output and the export stage's input: images, masks and the
per-sample columns, appended batch by batch into chunked, resizable, gzip'd datasets, and the
record of how they were made (file attributes)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

#: Per-sample columns (besides images/masks) and their HDF5 types.
STR = h5py.string_dtype("utf-8")
COLUMNS: dict[str, Any] = {
    "source": STR,  # train / valid / test / user / real
    "source_patient": STR,
    "view": STR,
    "instant": STR,
    "variant": np.int64,  # 0: the source mask itself, k >= 1: its k-th deformation
    "augmentation": STR,  # JSON of the deformation parameters
    "seed": np.int64,  # seed of the style code z (-1 for real images)
    "style": STR,  # style provenance: real:<training image>, prior, noise, none (cardigan.gan.styles)
    "spacing": (np.float32, (2,)),
    "is_synthetic": np.bool_,
}
REAL_MASK_AUG = json.dumps({"identity": True})


class SampleWriter:
    """Append (image, mask, per-sample columns) rows to chunked, resizable, gzip'd datasets."""

    def __init__(self, f: h5py.File, size: int, compression_level: int = 4):
        self.f = f
        self.n = 0
        opts = dict(compression="gzip", compression_opts=compression_level, track_times=False)
        for name in ("images", "masks"):
            f.create_dataset(name, shape=(0, size, size), maxshape=(None, size, size),
                             dtype=np.uint8, chunks=(1, size, size), **opts)
        for name, dtype in COLUMNS.items():
            if isinstance(dtype, tuple):
                f.create_dataset(name, shape=(0, *dtype[1]), maxshape=(None, *dtype[1]),
                                 dtype=dtype[0], chunks=(1024, *dtype[1]), **opts)
            else:
                f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1024,),
                                 **opts)

    def append(self, images: np.ndarray, masks: np.ndarray, columns: Mapping[str, Sequence]) -> None:
        b = len(images)
        if b == 0:
            return
        lo, hi = self.n, self.n + b
        for name, values in (("images", images), ("masks", masks), *columns.items()):
            ds = self.f[name]
            ds.resize(hi, axis=0)
            ds[lo:hi] = np.asarray(values) if ds.dtype != STR else list(values)
        self.n = hi

    def record(self, **attrs: Any) -> None:
        """How the samples were made, as file attributes (dicts and lists as sorted JSON)."""
        for key, value in attrs.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, sort_keys=True, default=str)
            self.f.attrs[key] = value
