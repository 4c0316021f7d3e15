"""Which config makes the synthetic dataset: stored in synthetic.h5, hashed on its card, and the
export rule's params (so that only these settings re-run it). Light: the workflow imports it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The keys of the export section that synthetic.h5 depends on (formats and the nnU-Net settings
#: are rule nnunet's alone).
DATASET_KEYS = ("include_real",)


def provenance(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config that determines synthetic.h5: stored in it and hashed on its card."""
    return {**{k: config[k] for k in ("data", "phantom", "train", "sample")},
            "export": {k: config["export"][k] for k in DATASET_KEYS}}
