"""The export stage as the workflow's export rule and ``cardigan export`` both run it: synthetic.h5,
its preview and card. The nnU-Net dataset is rule nnunet's (:func:`cardigan.export.nnunet.run_nnunet`),
so that changing the nnU-Net settings or ``export.formats`` re-runs only that."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardigan.core.checksums import sha256_file
from cardigan.data.masks import load_extracted_masks
from cardigan.export.card import CardFacts, write_card
from cardigan.export.preview import write_preview
from cardigan.export.synthetic_h5 import FOREGROUND, paired_files, write_synthetic_h5


def run_export(samples_path: str | Path, generator_path: str | Path,
               real_images: Sequence[str | Path], real_annos: Sequence[str | Path],
               provenance: Mapping[str, Any], outputs: Mapping[str, str | Path]
               ) -> dict[str, Any]:
    """Write synthetic.h5, the preview and the card (``outputs``: h5, preview, card) from the
    samples, the generator file and the real train split; ``provenance`` from
    :func:`provenance`. Returns the numbers of synthetic and real samples."""
    generator_sha = sha256_file(generator_path)
    pairs = list(paired_files(real_images, real_annos))
    stats, sample_attrs = write_synthetic_h5(samples_path, outputs["h5"], generator_sha,
                                             provenance,
                                             bool(provenance["export"]["include_real"]), pairs)
    real_masks = load_extracted_masks([a for _, a in pairs])
    real_areas = np.array([[int((m.mask == v).sum()) for v in FOREGROUND] for m in real_masks])
    if real_areas.size == 0:
        real_areas = np.zeros((0, len(FOREGROUND)), int)
    write_preview(outputs["h5"], outputs["preview"])
    write_card(outputs["card"], CardFacts(stats, real_areas, sample_attrs, provenance,
                                          str(generator_path), generator_sha))
    return {"synthetic": stats.counts["kind"]["synthetic"], "real": stats.counts["kind"]["real"]}
