"""Stage ``extract``: CAMUS (any of its three on-disk forms) -> per-split/view HDF5 files.

A run has two passes over the selected patients, both spread over ``threads`` processes:

1. validation: Info cfg files, split files, file presence, image headers, image/mask sizes. Every
   problem found is reported together and nothing is written.
2. processing, patient by patient in order (``imap``-like with a bounded window, so peak memory
   does not grow with the number of patients): full reads with the integrity checks (truncated
   gzip / .raw, labels outside 0..3, NaN in seed images), resizing, and writing by the main process.

All outputs are written into a temporary folder inside ``out_dir`` and moved into place only when
everything succeeded, so a failure in either pass leaves no output behind.

Outputs (see :mod:`cardigan.data.frames`): ``{split}_{view}.h5``, ``anno_{split}_{view}.h5`` for every
split in train/valid/test and selected view (a split without patients gets files without
datasets), ``metadata.csv`` and ``preview_{split}.png``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cardigan.core.defaults import default
from cardigan.core.labels import INSTANTS, SPLITS, VIEWS
from cardigan.data.camus import READERS, CamusError, PatientSource, assign, resolve_format
from cardigan.data.frames import image_key, mask_key, split_paths
from cardigan.data.resize import resize_image, resize_mask, resized_spacing

log = logging.getLogger("cardigan.extract")

METADATA_COLUMNS = [
    "patient", "source_patient", "view", "instant", "split", "source_format", "frame",
    "nb_frames", "height", "width", "spacing_row", "spacing_col", "spacing_row_resized",
    "spacing_col_resized", "image_quality", "ef", "age", "sex", "frame_rate", "labels",
    "source_file", "mask_file",
]
PREVIEW_PATIENTS = 6  # per split preview: the first frame of each of the first patients
_MAX_LISTED_PROBLEMS = 20


@dataclass
class ExtractSummary:
    """What a run extracted (returned by :func:`extract`, logged by the workflow script)."""

    source_format: str
    patients: dict[str, int]  # split -> patients written
    frames: int
    withheld: int  # 2019 testing/ patients whose ground truth is withheld
    unassigned: int  # patients that no split file names
    outputs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Task:
    fmt: str
    root: str
    patient: PatientSource
    views: tuple[str, ...]
    instants: tuple[str, ...]
    image_size: int


@dataclass
class _Frame:
    view: str
    instant: str
    image: np.ndarray
    mask: np.ndarray
    attrs: dict
    row: dict


def _validate(task: _Task) -> list[str]:
    reader = READERS[task.fmt]
    return reader.validate_patient(task.root, task.patient, task.views, task.instants)


def _process(task: _Task) -> list[_Frame]:
    reader = READERS[task.fmt]
    p = task.patient
    out = []
    for f in reader.read_patient(task.root, p, task.views, task.instants):
        size = task.image_size
        shape = tuple(int(s) for s in f.info.get("original_size", f.image.shape))
        spacing_resized = resized_spacing(f.spacing, shape, size)
        attrs = {
            "spacing": np.asarray(spacing_resized, dtype=np.float64),
            "original_size": np.asarray(shape, dtype=np.int64),
            "original_spacing": np.asarray(f.spacing, dtype=np.float64),
        }
        row = {
            "patient": p.name, "source_patient": p.source_id, "view": f.view,
            "instant": f.instant, "frame": f.info.get("frame"),
            "nb_frames": f.info.get("nb_frames"), "height": shape[0], "width": shape[1],
            "spacing_row": f.spacing[0], "spacing_col": f.spacing[1],
            "spacing_row_resized": spacing_resized[0], "spacing_col_resized": spacing_resized[1],
            "image_quality": f.info.get("image_quality"), "ef": f.info.get("ef"),
            "age": f.info.get("age"), "sex": f.info.get("sex"),
            "frame_rate": f.info.get("frame_rate"),
            "labels": None,  # labels present after resizing, filled in below
            "source_file": f.source_file, "mask_file": f.mask_file,
        }
        mask = resize_mask(f.mask, size)
        row["labels"] = " ".join(str(v) for v in np.flatnonzero(np.bincount(mask.ravel())))
        out.append(_Frame(f.view, f.instant, resize_image(f.image, size), mask, attrs, row))
    return out


def ordered_map(fn: Callable, items: Sequence, threads: int) -> Iterator:
    """``map(fn, items)`` over ``threads`` processes, in order, with at most 2 x threads results
    pending: unlike ``Pool.imap`` a slow consumer never lets finished results pile up in memory."""
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(pool.submit(fn, item))
                break
            yield result


class _Writers:
    """The open (temporary) HDF5 files of every split and view."""

    def __init__(self, tmp: Path, views: Iterable[str], attrs: dict):
        self.files: dict[tuple[str, str], tuple[h5py.File, h5py.File]] = {}
        for split in SPLITS:
            for view in views:
                im_path, gt_path = split_paths(tmp, split, view)
                pair = (h5py.File(im_path, "w", track_order=False), h5py.File(gt_path, "w"))
                for f, kind in zip(pair, ("images", "masks")):
                    f.attrs.update({**attrs, "split": split, "view": view, "kind": kind})
                self.files[split, view] = pair

    def write(self, split: str, patient: str, frame: _Frame) -> None:
        fi, fa = self.files[split, frame.view]
        for f, key, data in (
            (fi, image_key(patient, frame.view, frame.instant), frame.image),
            (fa, mask_key(patient, frame.view, frame.instant), frame.mask),
        ):
            if key in f:
                raise CamusError(f"{f.filename}: dataset {key!r} would be written twice")
            ds = f.create_dataset(key, data=data, track_times=False)
            ds.attrs.update(frame.attrs)

    def close(self) -> None:
        for pair in self.files.values():
            for f in pair:
                f.close()


def write_preview(frames: list[_Frame], path: Path, title: str) -> None:
    """A row of images above the same images with their masks overlaid; deterministic bytes."""
    from cardigan.core.plots import PNG_METADATA, overlay_colormap, plt

    colours = overlay_colormap()
    n = max(len(frames), 1)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, fr in enumerate(frames):
        label = f"{fr.row['patient']} {fr.view} {fr.instant}"
        axes[0, i].imshow(fr.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0, i].set_title(label, fontsize=7)
        axes[1, i].imshow(fr.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[1, i].imshow(fr.mask, cmap=colours, vmin=0, vmax=3, interpolation="nearest")
    if not frames:
        axes[0, 0].text(0.5, 0.5, "no patients in this split", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80, metadata=PNG_METADATA)
    plt.close(fig)


def extract(
    source: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = default("data", "format"),
    views: Sequence[str] = default("data", "views"),
    instants: Sequence[str] = default("data", "instants"),
    image_size: int = default("data", "image_size"),
    split: str = default("data", "split"),
    threads: int = 1,
) -> ExtractSummary:
    """Extract a CAMUS source into ``out_dir`` (see the module docstring). Raises CamusError."""
    source = Path(source)
    out_dir = Path(out_dir)
    views, instants = tuple(views), tuple(instants)
    for name, values, allowed in (("views", views, VIEWS), ("instants", instants, INSTANTS)):
        bad = [v for v in values if v not in allowed]
        if bad or not values or len(set(values)) != len(values):
            raise CamusError(f"{name} {list(values)} must be distinct values of {list(allowed)}")
    if image_size < 1:
        raise CamusError(f"image_size {image_size} must be positive")
    fmt = resolve_format(source, fmt)
    scan = READERS[fmt].scan(source)
    log.info("source %s: %s form, %d patients", source, fmt, len(scan.patients))
    if scan.withheld:
        log.info("left out %d patient(s) whose ground truth is withheld: %s", len(scan.withheld),
                 ", ".join(scan.withheld))
    renamed = [p for p in scan.patients if p.name != p.source_id.rsplit("/", 1)[-1]]
    if renamed:
        log.info("renamed %d patient(s) whose names collide with an earlier group, e.g. %s -> %s",
                 len(renamed), renamed[0].source_id, renamed[0].name)
    splits = assign(scan, split)
    selected = [p for p in scan.patients if p.name in splits]
    unassigned = len(scan.patients) - len(selected)
    if unassigned:
        log.info("left out %d patient(s) that no split names", unassigned)
    if not selected:
        raise CamusError(
            f"{source}: empty selection: no patients left (found {len(scan.patients)}, "
            f"{len(scan.withheld)} with withheld ground truth, {unassigned} in no split)"
        )
    tasks = [_Task(fmt, str(source), p, views, instants, image_size) for p in selected]

    problems = [msg for found in ordered_map(_validate, tasks, threads) for msg in found]
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        raise CamusError(
            f"{len(problems)} problem(s) in {source}, nothing written:\n  {listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    log.info("validated %d patients; extracting with %d thread(s)", len(tasks), threads)

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=out_dir))
    try:
        summary = _write_all(tmp, out_dir, tasks, splits, scan, fmt, views, instants, image_size,
                             threads)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _write_all(tmp, out_dir, tasks, splits, scan, fmt, views, instants, image_size, threads):
    file_attrs = {
        "source_format": fmt, "image_size": image_size, "instants": " ".join(instants),
        "channels": "0=ED 1=ES",
    }
    writers = _Writers(tmp, views, file_attrs)
    rows: list[dict] = []
    previews: dict[str, list[_Frame]] = {s: [] for s in SPLITS}
    counts = {s: 0 for s in SPLITS}
    try:
        for task, frames in zip(tasks, ordered_map(_process, tasks, threads)):
            name = task.patient.name
            split = splits[name]
            counts[split] += 1
            for frame in frames:
                writers.write(split, name, frame)
                rows.append({**frame.row, "split": split, "source_format": fmt})
            if frames and len(previews[split]) < PREVIEW_PATIENTS:
                previews[split].append(frames[0])
    finally:
        writers.close()
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    table.to_csv(tmp / "metadata.csv", index=False)
    for split in SPLITS:
        write_preview(previews[split], tmp / f"preview_{split}.png",
                      f"{split}: {counts[split]} patients, {fmt}, {image_size}x{image_size}")
    outputs = []
    for path in sorted(tmp.iterdir()):
        os.replace(path, out_dir / path.name)
        outputs.append(str(out_dir / path.name))
    summary = ExtractSummary(fmt, counts, len(rows), len(scan.withheld),
                             len(scan.patients) - len(tasks), outputs)
    log.info("wrote %s patients (train/valid/test), %d frames to %s",
             "/".join(str(counts[s]) for s in SPLITS), len(rows), out_dir)
    return summary
