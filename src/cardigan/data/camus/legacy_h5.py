"""The original project's single preprocessed HDF5 (``legacy_h5``): ``train|valid|test/patientXXXX/{2CH,4CH}/{im,gt,im_ref,gt_ref}``.

``im`` is float in [0, 1] shaped (2, H, W) or (2, H, W, 1) with index 0 = ED and 1 = ES; it is
converted to uint8 by ``round(x * 255)``. ``gt`` holds labels 0..3. ``im_ref`` (the frames before
the original project resized them), when present, gives the original size. The file records no pixel spacing,
so spacing is NaN unless a view group carries a ``spacing`` attribute (row mm, column mm).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from cardigan.core.labels import INSTANT_CHANNEL, SPLITS
from cardigan.data.camus.imageio import as_label_mask
from cardigan.data.camus.records import CamusError, LoadedFrame, PatientSource, Scan, unique_names


def is_layout(path: Path) -> bool:
    return path.is_file() and h5py.is_hdf5(path)


def scan(path: str | Path) -> Scan:
    path = Path(path)
    if not is_layout(path):
        raise CamusError(f"{path}: not an HDF5 file (expected the legacy single-file dataset_camus layout)")
    with h5py.File(path, "r") as f:
        unknown = sorted(set(f.keys()) - set(SPLITS))
        if unknown:
            raise CamusError(
                f"{path}: top-level group(s) {unknown} are not train/valid/test (the legacy_h5 layout)"
            )
        groups = [s for s in SPLITS if s in f]
        names = [sorted(k for k in f[s].keys()) for s in groups]
    renamed = unique_names(names, [f"{path}:/{s}" for s in groups])
    patients = [
        PatientSource(new, f"{s}/{old}", f"/{s}/{old}", s)
        for s, olds, news in zip(groups, names, renamed)
        for old, new in zip(olds, news)
    ]
    return Scan("legacy_h5", str(path), patients)


def _frames_shape(ds: h5py.Dataset) -> tuple[int, int] | None:
    shape = ds.shape
    if len(shape) == 3 and shape[0] == 2:
        return shape[1], shape[2]
    if len(shape) == 4 and shape[0] == 2 and shape[3] == 1:
        return shape[1], shape[2]
    return None


def _check_view(f: h5py.File, p: PatientSource, view: str) -> list[str]:
    where = f"{f.filename}:{p.location}/{view}"
    if view not in f[p.location]:
        return [f"{p.source_id}: {where} is missing"]
    group = f[p.location][view]
    problems = []
    shapes = {}
    for key in ("im", "gt"):
        if key not in group or not isinstance(group[key], h5py.Dataset):
            problems.append(f"{p.source_id}: {where}/{key} is missing")
            continue
        shapes[key] = _frames_shape(group[key])
        if shapes[key] is None:
            problems.append(
                f"{p.source_id}: {where}/{key} has shape {group[key].shape}, expected (2, H, W) "
                "or (2, H, W, 1) with ED at index 0 and ES at 1"
            )
    if len(shapes) == 2 and None not in shapes.values() and shapes["im"] != shapes["gt"]:
        problems.append(
            f"{p.source_id}: {where}: image im is {shapes['im']} but mask gt is {shapes['gt']}"
        )
    if "im" in group and group["im"].dtype.kind not in "fu":
        problems.append(f"{p.source_id}: {where}/im has dtype {group['im'].dtype}, expected float")
    return problems


def validate_patient(root: str, p: PatientSource, views, instants) -> list[str]:
    with h5py.File(root, "r") as f:
        return [problem for view in views for problem in _check_view(f, p, view)]


def read_patient(root: str, p: PatientSource, views, instants) -> list[LoadedFrame]:
    out = []
    with h5py.File(root, "r") as f:
        for view in views:
            problems = _check_view(f, p, view)
            if problems:
                raise CamusError(problems[0])
            group = f[p.location][view]
            where = f"{p.source_id}: {Path(root).name}:{p.location}/{view}"
            im = group["im"][()]
            gt = group["gt"][()]
            im = im.reshape(im.shape[:3])
            gt = gt.reshape(gt.shape[:3])
            if im.dtype.kind == "f":
                if not np.all(np.isfinite(im)):
                    raise CamusError(f"{where}/im holds NaN or inf values")
                if im.min() < 0 or im.max() > 1:
                    raise CamusError(
                        f"{where}/im values span [{im.min():g}, {im.max():g}], expected [0, 1]"
                    )
                im = np.round(im * 255.0).astype(np.uint8)
            elif im.dtype != np.uint8:
                raise CamusError(f"{where}/im has dtype {im.dtype}, expected float in [0, 1]")
            original = group["im_ref"].shape[1:3] if "im_ref" in group else im.shape[1:]
            spacing = tuple(float(s) for s in group.attrs["spacing"]) if "spacing" in group.attrs else (
                float("nan"), float("nan"))
            for instant in instants:
                c = INSTANT_CHANNEL[instant]
                mask = as_label_mask(gt[c], f"{where}/gt")
                meta = {"frame": None, "original_size": tuple(int(s) for s in original)}
                out.append(LoadedFrame(
                    view, instant, np.ascontiguousarray(im[c]), mask, spacing,  # type: ignore[arg-type]
                    f"{Path(root).name}:{p.location}/{view}/im[{c}]",
                    f"{Path(root).name}:{p.location}/{view}/gt[{c}]", meta,
                ))
    return out
