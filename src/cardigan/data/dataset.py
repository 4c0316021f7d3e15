"""PyTorch ``Dataset``s over ``synthetic.h5`` and the extracted real splits, lazy and safe with
several DataLoader workers, and a split helper that keeps each patient on one side.

Usage (PyTorch or MONAI)::

    from cardigan.data.dataset import ExtractedDataset, SyntheticDataset, grouped_split
    syn = SyntheticDataset("results/export/synthetic.h5", transform=monai_transforms)
    real = ExtractedDataset("results/data", "train", ["2CH", "4CH"], transform=monai_transforms)
    train, val = grouped_split(torch.utils.data.ConcatDataset([syn, real]), n_folds=5, fold=0)
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True, num_workers=4)

Items follow MONAI's channel-first convention: ``image`` (1, H, W) float32 in [0, 1] and ``mask``
(1, H, W) int64, so spatial dictionary transforms (``RandAffined``, ``Rand2DElasticd``, with
``mode=("bilinear", "nearest")``) and ``DiceCELoss(to_onehot_y=True)`` take them as they are.

The HDF5 files are opened on first access in each process (never in ``__init__``, and never
shared across a fork: an h5py handle inherited by a forked worker is not safe to use), and the
handles are dropped when the dataset is pickled for spawned workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from cardigan.data.frames import parse_key, split_paths
from cardigan.data.splits import assign_folds

_STRINGS = ("source", "source_patient", "view", "instant")


def _tensors(image: np.ndarray, mask: np.ndarray, spacing) -> dict[str, torch.Tensor]:
    """The channel-first tensors of one (H, W) uint8 image and mask."""
    return {"image": torch.from_numpy(image.astype(np.float32) / 255.0)[None],
            "mask": torch.from_numpy(mask.astype(np.int64))[None],
            "spacing": torch.from_numpy(np.asarray(spacing, dtype=np.float32))}


class SyntheticDataset(Dataset):
    """Samples of ``synthetic.h5`` as dicts.

    Each item: ``image`` float32 tensor (1, H, W) in [0, 1]; ``mask`` int64 tensor (1, H, W) with
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
            patients = [p.decode() if isinstance(p, bytes) else str(p)
                        for p in f["source_patient"][()]]
        self.rows = np.flatnonzero(flags) if synthetic_only else np.arange(len(flags))
        #: the source patient of each item (what :func:`grouped_split` groups by)
        self.patients = [patients[r] for r in self.rows]
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
            **_tensors(f["images"][row], f["masks"][row], f["spacing"][row]),
            "is_synthetic": bool(f["is_synthetic"][row]),
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


class ExtractedDataset(Dataset):
    """Frames of the extracted real dataset (``results/data/{split}_{view}.h5`` with its
    ``anno_{split}_{view}.h5``) as dicts with the same keys as :class:`SyntheticDataset`:
    ``image`` (1, H, W) float32, ``mask`` (1, H, W) int64, ``spacing``, ``is_synthetic`` (False),
    ``source`` (the split), ``source_patient``, ``view``, ``instant`` and ``index``.
    ``instants`` keeps only ED and/or ES frames."""

    def __init__(self, data_dir: str | Path, split: str, views=("2CH", "4CH"),
                 instants=None, transform: Callable[[dict], Any] | None = None):
        self.split = split
        self.transform = transform
        keep = None if instants is None else set(instants)
        self.files: list[tuple[Path, Path]] = []
        self.keys: list[tuple[int, str, str, str, str, str]] = []  # file, keys, patient...
        for view in views:
            images, annos = split_paths(data_dir, split, view)
            for path in (images, annos):
                if not path.is_file():
                    raise FileNotFoundError(f"extracted file {path} does not exist (split "
                                            f"{split}, view {view}): run the extract stage")
            with h5py.File(images, "r") as fi, h5py.File(annos, "r") as fa:
                for key in sorted(fi.keys()):
                    patient, v, _, instant = parse_key(key)
                    if keep is not None and instant not in keep:
                        continue
                    mkey = key.replace("_im_", "_gt_")
                    if mkey not in fa:
                        raise ValueError(f"{annos}: no mask {mkey!r} for image {key!r}")
                    self.keys.append((len(self.files), key, mkey, patient, v, instant))
            self.files.append((images, annos))
        #: the patient of each item (what :func:`grouped_split` groups by)
        self.patients = [k[3] for k in self.keys]
        self._handles: list[tuple[h5py.File, h5py.File]] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        index = index % len(self)
        if self._handles is None or self._pid != os.getpid():
            self._handles = [(h5py.File(i, "r"), h5py.File(a, "r")) for i, a in self.files]
            self._pid = os.getpid()
        file, key, mkey, patient, view, instant = self.keys[index]
        fi, fa = self._handles[file]
        item = {**_tensors(fi[key][()], fa[mkey][()], fi[key].attrs["spacing"]),
                "is_synthetic": False, "index": index, "source": self.split,
                "source_patient": patient, "view": view, "instant": instant}
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = None  # h5py handles cannot be pickled (spawned workers reopen)
        state["_pid"] = None
        return state


def item_patients(dataset: Dataset) -> list[str]:
    """The source patient of each item of a cardiGAN dataset, a ConcatDataset or a Subset of them."""
    if isinstance(dataset, ConcatDataset):
        return [p for d in dataset.datasets for p in item_patients(d)]
    if isinstance(dataset, Subset):
        patients = item_patients(dataset.dataset)
        return [patients[i] for i in dataset.indices]
    if not hasattr(dataset, "patients"):
        raise TypeError(f"{type(dataset).__name__} does not say which patient each item comes "
                        "from: use SyntheticDataset, ExtractedDataset or a ConcatDataset of them")
    return list(dataset.patients)


def grouped_split(dataset: Dataset, n_folds: int = 5, fold: int = 0) -> tuple[Subset, Subset]:
    """(train, validation) Subsets of ``dataset`` for ``fold`` of ``n_folds``, with every patient's
    items (real frames, synthetic images of its masks, their deformations and styles) on one side.
    The folds are those of the nnU-Net export's splits_final.json for the same samples."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} is not in 0..{n_folds - 1}")
    patients = item_patients(dataset)
    folds = assign_folds(patients, n_folds)
    val = [i for i, p in enumerate(patients) if folds[p] == fold]
    train = [i for i, p in enumerate(patients) if folds[p] != fold]
    return Subset(dataset, train), Subset(dataset, val)
