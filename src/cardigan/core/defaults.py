"""The config schema's defaults: the one home of every default value.

Stage dataclasses (``TrainConfig``, ``ModelConfig``, ``AugmentConfig``) take their field defaults
from here, so a default is written once, in ``schemas/config.schema.yaml``. This module only reads
the schema; validation lives in :mod:`cardigan.core.config`.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

#: The schema every config is validated against (``workflow/schemas/config.schema.yaml`` links here).
SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "config.schema.yaml"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _defaults(schema: dict[str, Any]) -> Any:
    props = schema.get("properties")
    if props is None:
        return copy.deepcopy(schema.get("default"))
    return {name: _defaults(sub) for name, sub in props.items()}


def schema_defaults() -> dict[str, Any]:
    """Every section with every key at its schema default (a fresh copy)."""
    return _defaults(load_schema())


def default(*key: str) -> Any:
    """The schema default of one key, e.g. ``default("train", "ngf")``; lists become tuples
    (dataclass defaults must be immutable)."""
    value = schema_defaults()
    for part in key:
        value = value[part]
    return tuple(value) if isinstance(value, list) else value
