"""Export: ``samples.h5`` (+ optionally the real train split) -> the deliverable dataset.

Outputs (``results/export/``): ``synthetic.h5`` (the dataset, see :func:`write_synthetic_h5`),
``preview.png`` (image / overlay pairs), ``dataset_card.md`` (counts, label areas synthetic vs
real, sources, provenance). When ``export.formats`` holds ``nnunet``, the nnU-Net v2 raw dataset
is written from ``synthetic.h5`` by :func:`cardigan.nnunet.write_nnunet` (its own workflow rule,
so that a change of the nnU-Net writer re-runs only that); the card names its folder. Everything
is written to temporary names and renamed, and is byte-identical across runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from . import __version__  # noqa: E402
from .config import config_hash  # noqa: E402
from .dataio import iter_frames  # noqa: E402
from .labels import LABELS  # noqa: E402
from .manifest import sha256_file  # noqa: E402
from .masks import load_extracted_masks  # noqa: E402
from .atomic import atomic_output  # noqa: E402
from .sample import COLUMNS, SampleWriter  # noqa: E402

log = logging.getLogger("cardigan")

COPY_BLOCK = 256  # rows copied at a time from samples.h5: bounds memory
SPACING_NOTE = ("per-sample dataset 'spacing' = (row mm, column mm) of the source mask's frame "
                "after resizing to image_size; NaN when the source file had none (PNG masks)")
OVERLAY = ListedColormap([(0, 0, 0, 0), (1.0, 0.2, 0.2, 0.45), (0.2, 0.9, 0.2, 0.45),
                          (0.3, 0.5, 1.0, 0.45)])
FOREGROUND = [v for v in sorted(LABELS) if v != 0]


def _pairs(real_images: Sequence[str | Path], real_annos: Sequence[str | Path]):
    """(images file, annotations file) pairs: ``anno_{split}_{view}.h5`` <-> ``{split}_{view}.h5``."""
    by_name = {Path(p).name: Path(p) for p in real_images}
    for anno in real_annos:
        anno = Path(anno)
        name = anno.name.removeprefix("anno_")
        if name not in by_name:
            raise ValueError(f"{anno}: no matching image file {name} among {sorted(by_name)}")
        yield by_name[name], anno


class _Stats:
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


def _decode(values) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def write_synthetic_h5(samples_path: str | Path, out_path: str | Path, generator_sha256: str,
                       provenance: Mapping[str, Any], include_real: bool,
                       real_pairs: Sequence[tuple[Path, Path]]) -> tuple[_Stats, dict[str, Any]]:
    """Copy samples.h5 (in blocks) and, with ``include_real``, the real frames into synthetic.h5.

    Datasets: ``images``/``masks`` (N, H, W) uint8, chunked (1, H, W), gzip; per-sample
    ``source``, ``source_patient``, ``view``, ``instant``, ``variant``, ``augmentation`` (JSON),
    ``seed`` (int64, -1 for real images), ``spacing`` (N, 2) float32, ``is_synthetic``. File
    attributes: labels, image size, spacing note, config YAML and hash, generator sha256, version,
    and the sampling statistics.
    """
    stats = _Stats()
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
                cols = {k: _decode(src[k][lo:hi]) if src[k].dtype.kind == "O" else src[k][lo:hi]
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


def preview_rows(keys: Sequence[Hashable], n: int, max_styles: int = 4) -> list[int]:
    """Rows for the preview: ``keys`` names each row's mask (the styles of one mask are
    consecutive rows with equal keys); about ``n`` rows from evenly spaced masks, each mask with
    all its styles (at most ``max_styles``)."""
    total = len(keys)
    if total == 0:
        return []
    starts = [i for i in range(total) if i == 0 or keys[i] != keys[i - 1]]
    ends = starts[1:] + [total]
    per_mask = max(1, min(max_styles, max(e - s for s, e in zip(starts, ends))))
    picks = np.linspace(0, len(starts) - 1, max(1, min(len(starts), n // per_mask)))
    rows: list[int] = []
    for g in sorted(set(picks.round().astype(int).tolist())):
        rows += list(range(starts[g], min(ends[g], starts[g] + per_mask)))
    return rows


def write_preview(h5_path: str | Path, out_path: str | Path, n: int = 8) -> None:
    """A grid of ``n`` samples, image on top and mask overlay below: evenly spaced masks, each
    with all its styles side by side (up to four), so one mask's different looks are seen."""
    with h5py.File(h5_path, "r") as f:
        total = f["images"].shape[0]
        keys = list(zip(*(_decode(f[k][()]) for k in ("source_patient", "view", "instant")),
                        f["variant"][()].tolist()))
        styles = _decode(f["style"][()]) if "style" in f else [""] * total
        rows = preview_rows(keys, n)
        images = [f["images"][i] for i in rows]
        masks = [f["masks"][i] for i in rows]
        titles = []
        for i in rows:
            kind = ("real image" if not f["is_synthetic"][i]
                    else "deformed mask" if f["variant"][i] > 0 else "real mask")
            look = styles[i].partition(":")[2].partition("+")[0] or styles[i]
            titles.append(f"{keys[i][0]} {keys[i][1]} {keys[i][2]}\n{kind}"
                          + (f"\nstyle: {look}" if look else ""))
    cols = len(rows)
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.4), squeeze=False)
    for j in range(cols):
        axes[0, j].imshow(images[j], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0, j].set_title(titles[j], fontsize=6)
        axes[1, j].imshow(images[j], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[1, j].imshow(masks[j], cmap=OVERLAY, vmin=0, vmax=3, interpolation="nearest")
        for ax in axes[:, j]:
            ax.set_axis_off()
    fig.suptitle("cardiGAN samples (top) and their masks (bottom: red cavity, green myocardium, "
                 "blue atrium)", fontsize=7)
    fig.tight_layout()
    with atomic_output(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def _area_table(syn: np.ndarray, real: np.ndarray, bins: int = 8) -> list[str]:
    """Per label: a histogram of areas (pixels) over common bins, synthetic vs real counts."""
    lines = []
    def mean(a: np.ndarray) -> str:
        return f"{a.mean():.0f}" if a.size else "-"

    for j, v in enumerate(FOREGROUND):
        both = np.concatenate([syn[:, j], real[:, j]])
        if both.size == 0:
            continue
        edges = np.linspace(both.min(), both.max() + 1, bins + 1).round().astype(int)
        hs = np.histogram(syn[:, j], edges)[0]
        hr = np.histogram(real[:, j], edges)[0]
        lines += [f"**{LABELS[v]}** (label {v}): synthetic mean {mean(syn[:, j])} px "
                  f"(n={len(syn)}), real mean {mean(real[:, j])} px (n={len(real)})", "",
                  "| area (px) | synthetic | real |", "|---|---:|---:|"]
        lines += [f"| {edges[k]}–{edges[k + 1] - 1} | {hs[k]} | {hr[k]} |" for k in range(bins)]
        lines.append("")
    return lines


CITATIONS = [
    "S. Leclerc, E. Smistad, J. Pedrosa, A. Østvik, F. Cervenansky, F. Espinosa, T. Espeland, "
    "E. A. R. Berg, P.-M. Jodoin, T. Grenier, C. Lartizien, J. D'hooge, L. Lovstakken and "
    "O. Bernard, \"Deep Learning for Segmentation Using an Open Large-Scale Dataset in 2D "
    "Echocardiography\", IEEE Transactions on Medical Imaging 38(9):2198–2210, 2019, "
    "doi:10.1109/TMI.2019.2900516 (CAMUS).",
    "T. Park, M.-Y. Liu, T.-C. Wang and J.-Y. Zhu, \"Semantic Image Synthesis with "
    "Spatially-Adaptive Normalization\", IEEE/CVF Conference on Computer Vision and Pattern "
    "Recognition (CVPR), 2019, doi:10.1109/CVPR.2019.00244 (SPADE).",
]


def _terms(source: str | None) -> list[str]:
    """The card's terms-of-use and citation section."""
    made_from = ("This dataset was made from **CAMUS** images and masks"
                 if source == "camus" else
                 f"This dataset was made from the built-in CAMUS-like phantom (data.source "
                 f"{source}), not from CAMUS; a dataset made with data.source camus")
    return ["## Terms of use and citation", "",
            f"{made_from}: a dataset derived from CAMUS inherits the CAMUS terms of use. Check "
            "with the CAMUS owners (CREATIS, Université de Lyon) what they allow before you "
            "share, publish or use it commercially; cardiGAN's MIT licence covers the code only, "
            "not data derived from CAMUS.", "",
            "If you use it, cite CAMUS and SPADE:", "", *[f"- {c}" for c in CITATIONS], ""]


def write_card(out_path: str | Path, stats: _Stats, real_areas: np.ndarray,
               sample_attrs: Mapping[str, Any], provenance: Mapping[str, Any],
               generator_path: str | Path, generator_sha256: str, formats: Sequence[str],
               nnunet_dir: str | None) -> None:
    """dataset_card.md: what is in the dataset and how it was made."""
    syn = np.concatenate(stats.areas[True]) if stats.areas[True] else np.zeros((0, 3), int)
    sample_cfg = provenance["sample"]
    aug_stats = json.loads(sample_attrs.get("augment_stats", "{}"))
    extra = json.loads(sample_attrs.get("generator_extra", "{}"))
    model = json.loads(sample_attrs.get("model_config", "{}"))
    c = stats.counts

    def table(counter: Counter, head: str) -> list[str]:
        return [f"| {head} | samples |", "|---|---:|"] + [
            f"| {k} | {counter[k]} |" for k in sorted(counter)] + [""]

    sources = [f"extracted masks of split(s) {', '.join(sample_cfg['mask_splits'])} "
               f"(views {', '.join(provenance['data']['views'])})"]
    if sample_cfg["mask_path"]:
        sources.append(f"user masks from `{sample_cfg['mask_path']}`")
    lines = [
        "# cardiGAN synthetic dataset", "",
        "Synthetic 2D apical echocardiograms with their segmentation masks (labels: "
        + ", ".join(f"{v} {LABELS[v]}" for v in sorted(LABELS)) + "), made by a SPADE GAN "
        "conditioned on CAMUS-style masks. Not for clinical use.", "",
        "## Files", "",
        "- `synthetic.h5`: `images`, `masks` (N, H, W) uint8 and per-sample `source`, "
        "`source_patient`, `view`, `instant`, `variant`, `augmentation`, `seed`, `style`, `spacing`, "
        "`is_synthetic`; read it with `cardigan.dataset.SyntheticDataset`.",
        "- `preview.png`: a few samples with their masks.",
    ]
    if nnunet_dir:
        lines += [f"- `{nnunet_dir}`: the same samples as an nnU-Net v2 raw dataset, with "
                  "`splits_final.json` (folds grouped by source patient: train nnU-Net with "
                  "these, its own random split leaks a patient's variants into validation) and "
                  "`cases.csv` (each case's row in synthetic.h5 and provenance).",
                  "- `datalist.json`: a MONAI Decathlon-style datalist of the nnU-Net files, "
                  "with each case's fold."]
    lines += ["", f"Formats: {', '.join(formats)}.", "",
              "## Counts", "", *table(c["kind"], "kind"), *table(c["mask"], "synthetic from"),
              *table(c["source"], "source"), *table(c["view"], "view"),
              *table(c["instant"], "instant"),
              "## Styles", "",
              "Where each image's style (gain, contrast, quality, dropout, sector, speckle) comes "
              "from: `real` = the encoding of a real training image (the `style` column names "
              "it), `prior` = a random code from N(0, I), `noise` = OASIS-style 3D noise, "
              "`none` = a mask-only generator (one look per mask), `acquired` = a real image; "
              "`+grey:ID` = grey levels matched to those of real training image ID "
              "(`sample.grey_levels: real`; a `real:ID` style takes the grey levels of the same "
              "image).",
              "", *table(c["style"], "style source"),
              f"Distinct real training images whose style was used: {len(stats.style_ids)}.", "",
              "## Label areas: synthetic samples vs real train masks", "",
              *_area_table(syn, real_areas),
              "## Sources", "", *[f"- {s}" for s in sources], "",
              "## How it was made", "",
              f"- Generator checkpoint `{generator_path}`, sha256 `{generator_sha256}`.",
              f"- Generator settings: `{json.dumps(model, sort_keys=True)}`.",
              f"- Training record stored with the checkpoint: "
              f"`{json.dumps(extra, sort_keys=True)}`.",
              f"- Masks: each source mask, plus {sample_cfg['augment']['n']} "
              "random affine + elastic deformations per mask that passed the plausibility "
              "checks (labels present, one component each, areas within the real train range "
              "+-10 %, cavity enclosed by myocardium and atrium; no worse than the source mask).",
              f"- Deformation draws: {aug_stats.get('accepted', 0)} accepted, rejected by reason "
              f"{json.dumps(aug_stats.get('rejected', {}), sort_keys=True)}, "
              f"{aug_stats.get('exhausted', 0)} given up after "
              f"{sample_cfg['augment']['max_tries']} tries, "
              f"{aug_stats.get('source_implausible', 0)} source masks failing the checks "
              "themselves (not deformed).",
              f"- {sample_cfg['samples_per_mask']} image(s) per mask, seed "
              f"{sample_cfg['seed']}.",
              f"- cardiGAN {__version__}; config hash (sha256 of the data, phantom, train, sample "
              f"and export sections) `{config_hash(provenance)}`; the full config is in the "
              "`config_yaml` attribute of synthetic.h5.", "",
              *_terms(provenance.get("data", {}).get("source"))]
    with atomic_output(out_path) as tmp:
        Path(tmp).write_text("\n".join(lines))


def run_export(samples_path: str | Path, generator_path: str | Path,
               real_images: Sequence[str | Path], real_annos: Sequence[str | Path],
               export_cfg: Mapping[str, Any], provenance: Mapping[str, Any],
               outputs: Mapping[str, str | Path]) -> dict[str, Any]:
    """Write synthetic.h5, the preview and the card; ``outputs`` maps h5, preview, card (and
    nnunet: the folder the card names, written by :func:`cardigan.nnunet.write_nnunet`)."""
    formats = list(export_cfg["formats"])
    if "nnunet" in formats and "nnunet" not in outputs:
        raise ValueError("export.formats holds nnunet but no nnunet output folder was given")
    generator_sha = sha256_file(generator_path)
    pairs = list(_pairs(real_images, real_annos))
    stats, sample_attrs = write_synthetic_h5(samples_path, outputs["h5"], generator_sha,
                                             provenance, bool(export_cfg["include_real"]),
                                             pairs)
    real_masks = load_extracted_masks([a for _, a in pairs])
    real_areas = np.array([[int((m.mask == v).sum()) for v in FOREGROUND] for m in real_masks])
    if real_areas.size == 0:
        real_areas = np.zeros((0, len(FOREGROUND)), int)
    write_preview(outputs["h5"], outputs["preview"])
    nnunet_dir = None
    if "nnunet" in formats:
        nnunet_dir = os.path.relpath(outputs["nnunet"], Path(outputs["card"]).parent)
    write_card(outputs["card"], stats, real_areas, sample_attrs, provenance, generator_path,
               generator_sha, formats, nnunet_dir)
    return {"synthetic": stats.counts["kind"]["synthetic"], "real": stats.counts["kind"]["real"]}
