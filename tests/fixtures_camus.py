"""Small CAMUS fixtures in each on-disk form, written with SimpleITK / h5py.

Frames are deliberately top/bottom asymmetric, as in CAMUS: the image is bright at the top
(apex) and dark at the bottom, the LV (labels 1, 2) is in the upper half and the LA (label 3) in
the lower half. Each frame's mean level encodes its patient so tests can tell patients apart.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk

SPLIT_NAMES = {"train": "subgroup_training.txt", "valid": "subgroup_validation.txt",
               "test": "subgroup_testing.txt"}
SPACING = (0.3, 0.6)  # (row mm, column mm): anisotropic like CAMUS


def make_frame(h: int, w: int, level: int, es: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of one frame. ``level`` (0..100) shifts the whole image."""
    rows = np.linspace(150, 10, h)[:, None]
    image = np.clip(rows + level + np.zeros((1, w)), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    r0, r1 = int(0.1 * h), int(0.5 * h)
    c0, c1 = int(0.25 * w), int(0.75 * w)
    mask[r0:r1, c0:c1] = 2
    shrink = 2 if es else 0
    mask[r0 + 2 + shrink : r1 - 2, c0 + 2 + shrink : c1 - 2 - shrink] = 1
    mask[int(0.55 * h) : int(0.85 * h), c0:c1] = 3
    return image, mask


def write_cfg(path: Path, ed: int = 1, es: int = 12, extra: dict | None = None) -> None:
    fields = {"ED": ed, "ES": es, "NbFrame": 20, "Sex": "F", "Age": 61, "ImageQuality": "Good",
              "EF": 55, "FrameRate": 50.0}
    fields.update(extra or {})
    path.write_text("".join(f"{k}: {v}\n" for k, v in fields.items() if v is not None))


def _write(array: np.ndarray, path: Path, spacing=SPACING, three_d: bool = False) -> None:
    if three_d:
        image = sitk.GetImageFromArray(array[None])
        image.SetSpacing((spacing[1], spacing[0], 1.0))
    else:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((spacing[1], spacing[0]))
    sitk.WriteImage(image, str(path))


def write_patient(folder: Path, name: str, level: int, ext: str, views=("2CH", "4CH"),
                  size=(60, 40), ed: int = 1, es: int = 12, gt: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for view in views:
        # Withheld patients' cfg files lack the volume lines (EF), as in the 2019 release.
        write_cfg(folder / f"Info_{view}.cfg", ed, es, None if gt else {"EF": None})
        for instant in ("ED", "ES"):
            image, mask = make_frame(*size, level + (5 if view == "2CH" else 0), es=instant == "ES")
            _write(image, folder / f"{name}_{view}_{instant}{ext}", three_d=ext == ".mhd")
            if gt:
                _write(mask, folder / f"{name}_{view}_{instant}_gt{ext}", three_d=ext == ".mhd")


def write_nifti2023(root: Path, n: int = 6, split=(4, 1, 1), views=("2CH", "4CH"),
                    size=(60, 40)) -> Path:
    """``root/database_nifti/patient000k`` for k = 1..n and a split of the given sizes."""
    base = root / "database_nifti"
    names = [f"patient{k:04d}" for k in range(1, n + 1)]
    for k, name in enumerate(names, 1):
        write_patient(base / name, name, 10 * k, ".nii.gz", views, size)
    (root / "database_split").mkdir(parents=True, exist_ok=True)
    write_split(root / "database_split", names, split)
    return root


def write_split(folder: Path, names: list[str], split=(4, 1, 1)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for fname, count in zip(SPLIT_NAMES.values(), split):
        (folder / fname).write_text("".join(f"{n}\n" for n in names[start : start + count]))
        start += count


def write_mhd2019(root: Path, n_train: int = 9, n_test: int = 3, withheld=(), views=("2CH", "4CH"),
                  size=(60, 40)) -> Path:
    """``training/`` patients 1..n_train (level 10k) and ``testing/`` 1..n_test (level 5 + 10k);
    testing patients whose number is in ``withheld`` have no _gt files and no volume lines."""
    (root / "training").mkdir(parents=True, exist_ok=True)
    for k in range(1, n_train + 1):
        write_patient(root / "training" / f"patient{k:04d}", f"patient{k:04d}", 10 * k, ".mhd",
                      views, size)
    for k in range(1, n_test + 1):
        folder = root / "testing" / f"patient{k:04d}"
        write_patient(folder, f"patient{k:04d}", 5 + 10 * k, ".mhd", views, size,
                      gt=k not in withheld)
    return root


def write_legacy_h5(path: Path, groups: dict[str, int], trailing_axis: bool = False,
                  size: int = 32, views=("2CH", "4CH")) -> Path:
    """Seed layout with ``groups[split]`` patients per split, numbered from 1 in every group."""
    offsets = {"train": 0, "valid": 3, "test": 6}
    with h5py.File(path, "w") as f:
        for split, n in groups.items():
            for k in range(1, n + 1):
                for view in views:
                    g = f.create_group(f"{split}/patient{k:04d}/{view}")
                    frames = [make_frame(size, size, 10 * k + offsets[split], es=i == 1)
                              for i in range(2)]
                    im = np.stack([fr[0] for fr in frames]).astype(np.float32) / 255.0
                    gt = np.stack([fr[1] for fr in frames])
                    ref = [make_frame(60, 40, 10 * k, es=i == 1) for i in range(2)]
                    if trailing_axis:
                        im, gt = im[..., None], gt[..., None]
                    g["im"], g["gt"] = im, gt
                    g["im_ref"] = np.stack([r[0] for r in ref]).astype(np.float32) / 255.0
                    g["gt_ref"] = np.stack([r[1] for r in ref])
    return path
