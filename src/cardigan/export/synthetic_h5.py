"""synthetic.h5, the deliverable dataset: ``samples.h5`` (+ optionally the real train split) with
per-sample provenance. Read it with :class:`cardigan.dataset.SyntheticDataset`."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from cardigan.core.atomic import atomic_output
from cardigan.core.config import config_hash
from cardigan.core.labels import LABELS
from cardigan.core.version import __version__
from cardigan.data.frames import iter_frames
from cardigan.synth.samples_file import COLUMNS, SampleWriter

log = logging.getLogger("cardigan")

COPY_BLOCK = 256  # rows copied at a time from samples.h5: bounds memory
SPACING_NOTE = ("per-sample dataset 'spacing' = (row mm, column mm) of the source mask's frame "
                "after resizing to image_size; NaN when the source file had none (PNG masks)")
FOREGROUND = [v for v in sorted(LABELS) if v != 0]


def paired_files(real_images: Sequence[str | Path], real_annos: Sequence[str | Path]):
    """(images file, annotations file) pairs: ``anno_{split}_{view}.h5`` <-> ``{split}_{view}.h5``."""
    by_name = {Path(p).name: Path(p) for p in real_images}
    for anno in real_annos:
        anno = Path(anno)
        name = anno.name.removeprefix("anno_")
        if name not in by_name:
            raise ValueError(f"{anno}: no matching image file {name} among {sorted(by_name)}")
        yield by_name[name], anno


class ExportStats:
    """Counts and per-label areas of what goes into synthetic.h5 (for the card)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {k: Counter() for k in
                                           ("view", "instant", "mask", "kind", "source",
                                            "style")}
        self.style_ids: set[str] = set()
        self.areas: dict[bool, list[np.ndarray]] = {True: [], False: []}

    def add(self, masks: np.ndarray, cols: Mapping[str, Sequence]) -> None:
        for i in range(len(masks)):
            syn = bool(cols["is_synthetic"][i])
            self.counts["view"][cols["view"][i]] += 1
            self.counts["instant"][cols["instant"][i]] += 1
            self.counts["kind"]["synthetic" if syn else "real"] += 1
            self.counts["source"][cols["source"][i]] += 1
            kind, _, ident = str(cols["style"][i]).partition(":")
            self.counts["style"][kind] += 1
            if ident:
                self.style_ids.add(ident)
            if syn:
                self.counts["mask"]["deformed mask" if cols["variant"][i] > 0 else "real mask"] += 1
        flat = masks.reshape(len(masks), -1)
        areas = np.stack([(flat == v).sum(1) for v in FOREGROUND], 1)
        syn = np.asarray(cols["is_synthetic"], bool)
        self.areas[True].append(areas[syn])
        self.areas[False].append(areas[~syn])


def decode_strings(values) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def write_synthetic_h5(samples_path: str | Path, out_path: str | Path, generator_sha256: str,
                       provenance: Mapping[str, Any], include_real: bool,
                       real_pairs: Sequence[tuple[Path, Path]]) -> tuple[ExportStats, dict[str, Any]]:
    """Copy samples.h5 (in blocks) and, with ``include_real``, the real frames into synthetic.h5.

    Datasets: ``images``/``masks`` (N, H, W) uint8, chunked (1, H, W), gzip; per-sample
    ``source``, ``source_patient``, ``view``, ``instant``, ``variant``, ``augmentation`` (JSON),
    ``seed`` (int64, -1 for real images), ``spacing`` (N, 2) float32, ``is_synthetic``. File
    attributes: labels, image size, spacing note, config YAML and hash, generator sha256, version,
    and the sampling statistics.
    """
    stats = ExportStats()
    with h5py.File(samples_path, "r") as src:
        attrs = dict(src.attrs)
        if attrs.get("generator_sha256") != generator_sha256:
            raise ValueError(
                f"{samples_path} was made by a generator with sha256 "
                f"{attrs.get('generator_sha256')}, not by the current one ({generator_sha256}): "
                "re-run the sample stage"
            )
        size = int(attrs["image_size"])
        with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
            writer = SampleWriter(f, size)
            n = src["images"].shape[0]
            for lo in range(0, n, COPY_BLOCK):
                hi = min(n, lo + COPY_BLOCK)
                cols = {k: decode_strings(src[k][lo:hi]) if src[k].dtype.kind == "O" else src[k][lo:hi]
                        for k in COLUMNS}
                masks = src["masks"][lo:hi]
                writer.append(src["images"][lo:hi], masks, cols)
                stats.add(masks, cols)
            n_real = 0
            if include_real:
                for img_path, anno_path in real_pairs:
                    for fr in iter_frames(img_path, anno_path):
                        if fr.image.shape != (size, size):
                            raise ValueError(f"{img_path}: {fr.patient} {fr.view} {fr.instant} is "
                                             f"{fr.image.shape}, the samples are {size}x{size}")
                        cols = {"source": ["real"], "source_patient": [fr.patient],
                                "view": [fr.view], "instant": [fr.instant], "variant": [0],
                                "augmentation": ["{}"], "seed": [-1], "style": ["acquired"],
                                "spacing": [fr.spacing], "is_synthetic": [False]}
                        writer.append(fr.image[None], fr.mask[None], cols)
                        stats.add(fr.mask[None], cols)
                        n_real += 1
            f.attrs["label_values"] = np.array(sorted(LABELS), dtype=np.int64)
            f.attrs["label_names"] = [LABELS[v] for v in sorted(LABELS)]
            f.attrs["labels"] = json.dumps({str(v): LABELS[v] for v in sorted(LABELS)})
            f.attrs["image_size"] = size
            f.attrs["spacing_note"] = SPACING_NOTE
            f.attrs["config_yaml"] = yaml.safe_dump(dict(provenance), sort_keys=True)
            f.attrs["config_sha256"] = config_hash(provenance)
            f.attrs["generator_sha256"] = generator_sha256
            f.attrs["cardigan_version"] = __version__
            for key in ("model_config", "generator_extra", "augment_stats", "area_ranges",
                        "n_sources"):
                if key in attrs:
                    f.attrs[key] = attrs[key]
            f.attrs["n_synthetic"] = n
            f.attrs["n_real"] = n_real
    log.info("wrote %s: %d synthetic + %d real samples", out_path, n, n_real)
    return stats, attrs
