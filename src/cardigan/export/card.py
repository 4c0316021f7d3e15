"""dataset_card.md: what is in the synthetic dataset, how it was made, and its terms of use."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cardigan.core.atomic import atomic_output
from cardigan.core.config import config_hash
from cardigan.core.labels import LABELS
from cardigan.core.version import __version__
from cardigan.export.synthetic_h5 import FOREGROUND, ExportStats


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


@dataclass(frozen=True)
class CardFacts:
    """What the card reports: the export's counts and areas, the samples file's record of how
    the samples were made, the config sections behind them, and the generator file."""

    stats: ExportStats
    real_areas: np.ndarray  # (N, 3) label areas of the real train masks
    sample_attrs: Mapping[str, Any]
    provenance: Mapping[str, Any]
    generator_path: str
    generator_sha256: str

    def attr(self, name: str) -> Any:
        return json.loads(self.sample_attrs.get(name, "{}"))


def _table(counter: Counter, head: str) -> list[str]:
    return [f"| {head} | samples |", "|---|---:|"] + [
        f"| {k} | {counter[k]} |" for k in sorted(counter)] + [""]


def _title() -> list[str]:
    return ["# cardiGAN synthetic dataset", "",
            "Synthetic 2D apical echocardiograms with their segmentation masks (labels: "
            + ", ".join(f"{v} {LABELS[v]}" for v in sorted(LABELS)) + "), made by a SPADE GAN "
            "conditioned on CAMUS-style masks. Not for clinical use.", ""]


def _files() -> list[str]:
    return ["## Files", "",
            "- `synthetic.h5`: `images`, `masks` (N, H, W) uint8 and per-sample `source`, "
            "`source_patient`, `view`, `instant`, `variant`, `augmentation`, `seed`, `style`, "
            "`spacing`, `is_synthetic`; read it with `cardigan.dataset.SyntheticDataset`.",
            "- `preview.png`: a few samples with their masks.",
            "- With `nnunet` in `export.formats`: `nnunet/Dataset<id>_<name>/`, the same samples "
            "as an nnU-Net v2 raw dataset, with `splits_final.json` (folds grouped by source "
            "patient: train nnU-Net with these, its own random split leaks a patient's variants "
            "into validation) and `cases.csv` (each case's row in synthetic.h5 and provenance); "
            "`datalist.json`, a MONAI Decathlon-style datalist of those files with each case's "
            "fold.", ""]


def _counts(facts: CardFacts) -> list[str]:
    c = facts.stats.counts
    return ["## Counts", "", *_table(c["kind"], "kind"), *_table(c["mask"], "synthetic from"),
            *_table(c["source"], "source"), *_table(c["view"], "view"),
            *_table(c["instant"], "instant")]


def _styles(facts: CardFacts) -> list[str]:
    return ["## Styles", "",
            "Where each image's style (gain, contrast, quality, dropout, sector, speckle) comes "
            "from: `real` = the encoding of a real training image (the `style` column names "
            "it), `prior` = a random code from N(0, I), `noise` = OASIS-style 3D noise, "
            "`none` = a mask-only generator (one look per mask), `acquired` = a real image; "
            "`+grey:ID` = grey levels matched to those of real training image ID "
            "(`sample.grey_levels: real`; a `real:ID` style takes the grey levels of the same "
            "image).",
            "", *_table(facts.stats.counts["style"], "style source"),
            f"Distinct real training images whose style was used: "
            f"{len(facts.stats.style_ids)}.", ""]


def _label_areas(facts: CardFacts) -> list[str]:
    areas = facts.stats.areas[True]
    syn = np.concatenate(areas) if areas else np.zeros((0, 3), int)
    return ["## Label areas: synthetic samples vs real train masks", "",
            *_area_table(syn, facts.real_areas)]


def _sources(facts: CardFacts) -> list[str]:
    sample_cfg = facts.provenance["sample"]
    sources = [f"extracted masks of split(s) {', '.join(sample_cfg['mask_splits'])} "
               f"(views {', '.join(facts.provenance['data']['views'])})"]
    if sample_cfg["mask_path"]:
        sources.append(f"user masks from `{sample_cfg['mask_path']}`")
    return ["## Sources", "", *[f"- {s}" for s in sources], ""]


def _how_it_was_made(facts: CardFacts) -> list[str]:
    sample_cfg = facts.provenance["sample"]
    aug_stats = facts.attr("augment_stats")
    return ["## How it was made", "",
            f"- Generator checkpoint `{facts.generator_path}`, sha256 `{facts.generator_sha256}`.",
            f"- Generator settings: `{json.dumps(facts.attr('model_config'), sort_keys=True)}`.",
            f"- Training record stored with the checkpoint: "
            f"`{json.dumps(facts.attr('generator_extra'), sort_keys=True)}`.",
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
            f"- {sample_cfg['samples_per_mask']} image(s) per mask{_own_styles(sample_cfg)}, "
            f"seed {sample_cfg['seed']}.",
            f"- cardiGAN {__version__}; config hash (sha256 of the config sections that make the "
            f"dataset: {', '.join(facts.provenance)}) `{config_hash(facts.provenance)}`; they "
            "are in full in the `config_yaml` attribute of synthetic.h5.", ""]


def _own_styles(sample_cfg: dict) -> str:
    own = sample_cfg["own_styles"]
    return (f", the first {own} in the style of the training frame the mask was drawn on where "
            "the generator stores it (`sample.own_styles`)" if own else "")


def write_card(out_path: str | Path, facts: CardFacts) -> None:
    """dataset_card.md: what is in the dataset and how it was made."""
    lines = [*_title(), *_files(), *_counts(facts), *_styles(facts), *_label_areas(facts),
             *_sources(facts), *_how_it_was_made(facts),
             *_terms(facts.provenance.get("data", {}).get("source"))]
    with atomic_output(out_path) as tmp:
        Path(tmp).write_text("\n".join(lines))
