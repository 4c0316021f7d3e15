"""Checking and reading a patient of a file-based release (2023 NIfTI, 2019 MetaImage).

Both releases store, per patient folder, ``{patient}_{view}_{ED|ES}{ext}`` images, ``…_gt{ext}``
masks and ``Info_{view}.cfg``; only the extension differs.
"""

from __future__ import annotations

import os
from pathlib import Path

from cardigan.data.camus.cfg import frame_info
from cardigan.data.camus.imageio import as_label_mask, as_uint8_image, header_info, read_frame
from cardigan.data.camus.records import CamusError, LoadedFrame, PatientSource


def frame_paths(p: PatientSource, view: str, instant: str, ext: str) -> tuple[Path, Path]:
    folder = Path(p.location)
    stem = f"{folder.name}_{view}_{instant}"
    return folder / f"{stem}{ext}", folder / f"{stem}_gt{ext}"


def validate_patient(p: PatientSource, views, instants, ext: str) -> list[str]:
    """Problems found from the cfg files and image headers alone (cheap: no pixel data read)."""
    problems: list[str] = []
    for view in views:
        try:
            frame_info(Path(p.location) / f"Info_{view}.cfg")
        except CamusError as err:
            problems.append(f"{p.source_id}: {err}")
        for instant in instants:
            image, mask = frame_paths(p, view, instant, ext)
            try:
                isize, _ = header_info(image)
                msize, _ = header_info(mask)
            except CamusError as err:
                problems.append(f"{p.source_id}: {err}")
                continue
            if isize != msize:
                problems.append(
                    f"{p.source_id} {view} {instant}: image {image.name} is {isize[0]}x{isize[1]} "
                    f"but mask {mask.name} is {msize[0]}x{msize[1]} (H x W)"
                )
    return problems


def read_patient(root: str, p: PatientSource, views, instants, ext: str) -> list[LoadedFrame]:
    """Every selected frame of one patient, with the integrity and label checks."""
    out = []
    for view in views:
        info = frame_info(Path(p.location) / f"Info_{view}.cfg")
        for instant in instants:
            image_path, mask_path = frame_paths(p, view, instant, ext)
            image, spacing = read_frame(image_path)
            mask, _ = read_frame(mask_path)
            image = as_uint8_image(image, f"{p.source_id}: {image_path}")
            mask = as_label_mask(mask, f"{p.source_id}: {mask_path}")
            if image.shape != mask.shape:
                raise CamusError(
                    f"{p.source_id} {view} {instant}: image {image_path} is {image.shape} but "
                    f"mask {mask_path} is {mask.shape}"
                )
            meta = {k: v for k, v in info.items() if k not in ("ED", "ES")}
            meta["frame"] = info[instant]
            out.append(LoadedFrame(
                view, instant, image, mask, spacing,
                os.path.relpath(image_path, root), os.path.relpath(mask_path, root), meta,
            ))
    return out
