"""A PyTorch ``Dataset`` over ``synthetic.h5``, lazy and safe with several DataLoader workers.

Usage (PyTorch or MONAI)::

    from cardigan.dataset import SyntheticDataset
    ds = SyntheticDataset("results/export/synthetic.h5")
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, num_workers=4)

The HDF5 file is opened on first access in each process (never in ``__init__``, and never shared
across a fork: an h5py handle inherited by a forked worker is not safe to use), and the handle is
dropped when the dataset is pickled for spawned workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

_STRINGS = ("source", "source_patient", "view", "instant")


class SyntheticDataset(Dataset):
    """Samples of ``synthetic.h5`` as dicts.

    Each item: ``image`` float32 tensor (1, H, W) in [0, 1]; ``mask`` int64 tensor (H, W) with
    labels 0..3; ``is_synthetic`` bool; ``spacing`` float32 tensor (2,) (row mm, column mm);
    ``source``, ``source_patient``, ``view``, ``instant`` strings; ``index`` the row in the file.
    ``transform`` (e.g. a MONAI dictionary transform) is applied to that dict.
    ``synthetic_only`` keeps only the rows with ``is_synthetic`` true.
    """

    def __init__(self, path: str | Path, transform: Callable[[dict], Any] | None = None,
                 synthetic_only: bool = False):
        self.path = Path(path)
        self.transform = transform
        if not self.path.is_file():
            raise FileNotFoundError(f"synthetic dataset {self.path} does not exist")
        with h5py.File(self.path, "r") as f:  # read the index, then close: workers reopen
            for name in ("images", "masks", "is_synthetic"):
                if name not in f:
                    raise ValueError(f"{self.path} is not a cardiGAN synthetic.h5 (no {name!r})")
            flags = f["is_synthetic"][()].astype(bool)
        self.rows = np.flatnonzero(flags) if synthetic_only else np.arange(len(flags))
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # a handle opened by another process (inherited through fork) is never reused
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        row = int(self.rows[index])
        f = self._handle()
        item: dict[str, Any] = {
            "image": torch.from_numpy(f["images"][row].astype(np.float32) / 255.0)[None],
            "mask": torch.from_numpy(f["masks"][row].astype(np.int64)),
            "is_synthetic": bool(f["is_synthetic"][row]),
            "spacing": torch.from_numpy(np.asarray(f["spacing"][row], dtype=np.float32)),
            "index": row,
        }
        for name in _STRINGS:
            value = f[name][row]
            item[name] = value.decode() if isinstance(value, bytes) else str(value)
        return self.transform(item) if self.transform is not None else item

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles cannot be pickled (spawned workers reopen)
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass
