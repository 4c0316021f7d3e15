"""The synthetic dataset as an nnU-Net v2 raw dataset, and a checker for nnU-Net's integrity rules.

Layout (nnU-Net v2 ``documentation/dataset_format.md``)::

    Dataset{ID:03d}_{name}/
        dataset.json
        imagesTr/{case}_0000.nii.gz
        labelsTr/{case}.nii.gz

Each image and label is a **2D** NIfTI written with SimpleITK: nnU-Net's ``SimpleITKIO`` reads a 2D
file as a (1, 1, H, W) array with a dummy out-of-plane spacing, which is how nnU-Net v2 supports 2D
data natively (no pseudo-3D conversion). The spacing is the sample's (column mm, row mm) in ITK
order, the same for image and label. ``channel_names`` is ``{"0": "US"}``: nnU-Net maps every
channel name other than CT/noNorm/zscore/rescale_0_1/rgb_to_0_1 to per-image z-scoring, the
right choice for ultrasound. Case identifiers are ``syn_{row:06d}`` / ``real_{row:06d}`` where
``row`` is the sample's row in ``synthetic.h5``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk

from .atomic import atomic_dir
from .labels import LABELS

log = logging.getLogger("cardigan")

FILE_ENDING = ".nii.gz"
CHANNEL_NAMES = {"0": "US"}


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def _write(array: np.ndarray, spacing_rc: tuple[float, float], path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0])))
    sitk.WriteImage(img, str(path), True)


def write_nnunet(synthetic_h5: str | Path, out_dir: str | Path, dataset_id: int, name: str) -> Path:
    """Write the nnU-Net raw dataset of ``synthetic_h5`` to ``out_dir`` (replacing it atomically:
    built in a temporary folder beside it and renamed). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    expected = dataset_folder_name(dataset_id, name)
    if out_dir.name != expected:
        raise ValueError(f"nnU-Net dataset folder must be named {expected}, got {out_dir}")
    with atomic_dir(out_dir) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        unknown_spacing = 0
        with h5py.File(synthetic_h5, "r") as f:
            n = f["images"].shape[0]
            synthetic = f["is_synthetic"][()]
            spacings = f["spacing"][()]
            for i in range(n):
                case = f"{'syn' if synthetic[i] else 'real'}_{i:06d}"
                spacing = tuple(float(s) for s in spacings[i])
                if not np.all(np.isfinite(spacing)) or min(spacing) <= 0:
                    spacing = (1.0, 1.0)
                    unknown_spacing += 1
                _write(f["images"][i], spacing, tmp / "imagesTr" / f"{case}_0000{FILE_ENDING}")
                _write(f["masks"][i], spacing, tmp / "labelsTr" / f"{case}{FILE_ENDING}")
        if unknown_spacing:
            log.warning("nnU-Net export: %d samples have no known spacing (PNG user masks): "
                        "written with 1 x 1 mm", unknown_spacing)
        dataset = {
            "name": name,
            "description": "cardiGAN synthetic echocardiograms (SPADE GAN conditioned on CAMUS-"
                           "style masks); see dataset_card.md beside this folder",
            "channel_names": CHANNEL_NAMES,
            "labels": {LABELS[v]: v for v in sorted(LABELS)},
            "numTraining": n,
            "file_ending": FILE_ENDING,
            "overwrite_image_reader_writer": "SimpleITKIO",
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        check_nnunet_dataset(tmp)
    log.info("wrote nnU-Net raw dataset %s (%d training cases)", out_dir, n)
    return out_dir


def check_nnunet_dataset(folder: str | Path) -> int:
    """Re-implementation of nnU-Net v2's ``verify_dataset_integrity`` for this dataset's format.

    Checks: dataset.json has labels, channel_names, numTraining and file_ending; labels are
    consecutive from 0 (background); numTraining equals the number of cases in imagesTr; every
    case has all its channel files ``{case}_{XXXX}`` and a label file; label files hold only the
    declared labels; image and label have the same shape, spacing, origin and direction. Raises
    ValueError naming the first problem; returns the number of cases.
    """
    folder = Path(folder)
    ds = json.loads((folder / "dataset.json").read_text())
    missing = [k for k in ("labels", "channel_names", "numTraining", "file_ending") if k not in ds]
    if missing:
        raise ValueError(f"{folder}/dataset.json misses required keys {missing}")
    values = sorted(ds["labels"].values())
    if values[0] != 0 or np.any(np.diff(values) != 1):
        raise ValueError(f"{folder}: labels must be consecutive from 0, got {values}")
    ending = ds["file_ending"]
    channels = sorted(int(c) for c in ds["channel_names"])
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    cases: dict[str, set[int]] = {}
    for p in sorted((folder / "imagesTr").iterdir()):
        m = pattern.match(p.name)
        if m is None:
            raise ValueError(f"{p}: not named case_XXXX{ending}")
        cases.setdefault(m["case"], set()).add(int(m["ch"]))
    if len(cases) != ds["numTraining"]:
        raise ValueError(f"{folder}: numTraining is {ds['numTraining']} but imagesTr holds "
                         f"{len(cases)} cases")
    labels_found = {p.name[: -len(ending)] for p in (folder / "labelsTr").iterdir()
                    if p.name.endswith(ending)}
    for case, chans in cases.items():
        if sorted(chans) != channels:
            raise ValueError(f"{folder}: case {case} has channels {sorted(chans)}, expected "
                             f"{channels}")
        if case not in labels_found:
            raise ValueError(f"{folder}: case {case} has no label file in labelsTr")
        seg = sitk.ReadImage(str(folder / "labelsTr" / f"{case}{ending}"))
        bad = sorted(set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist()) - set(values))
        if bad:
            raise ValueError(f"{folder}: label file of {case} holds undeclared labels {bad}")
        for c in channels:
            img = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_{c:04d}{ending}"))
            if img.GetSize() != seg.GetSize():
                raise ValueError(f"{folder}: {case} image size {img.GetSize()} != label size "
                                 f"{seg.GetSize()}")
            for what in ("GetSpacing", "GetOrigin", "GetDirection"):
                a, b = getattr(img, what)(), getattr(seg, what)()
                if not np.allclose(a, b):
                    raise ValueError(f"{folder}: {case} image and label differ in {what[3:]}: "
                                     f"{a} != {b}")
            if np.isnan(sitk.GetArrayViewFromImage(img)).any():
                raise ValueError(f"{folder}: image of {case} contains NaN")
    return len(cases)
