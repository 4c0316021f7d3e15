"""Configuration: JSON-Schema validation with defaults, semantic checks, and config hashing.

The schema (``workflow/schemas/config.schema.yaml``) says what each key may hold; this module
fills in defaults, turns the first violation into one line that names the key, and adds the checks
a schema cannot express (paths that must exist, combinations of settings).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml


#: The schema every config is validated against (``workflow/schemas/config.schema.yaml`` links here).
SCHEMA_PATH = Path(__file__).with_name("schemas") / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _with_defaults(cls):
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def validate(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Fill defaults into ``config`` (in place) and validate it; return it.

    Raises ConfigError with one line naming the offending key, e.g.
    ``config key data.views[0]: '3CH' is not one of ['2CH', '4CH']``.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        key = _key_path(err.absolute_path)
        if err.validator == "additionalProperties":
            raise ConfigError(f"config key {key}: {err.message} (unknown key: check its spelling)")
        raise ConfigError(f"config key {key}: {err.message}")
    check_semantics(config)
    return config


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a cardiGAN config YAML (``None``: an empty one) and validate it, defaults filled in."""
    config: dict[str, Any] = {}
    if path is not None:
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"config file {path}: {err}") from err
        if not isinstance(config, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(config).__name__}")
    return validate(config)


def check_semantics(config: Mapping[str, Any]) -> None:
    """Checks a schema cannot express. Raises ConfigError naming the key."""
    data = config["data"]
    if data["source"] == "camus":
        path = data.get("camus_path")
        if not path:
            raise ConfigError("config key data.camus_path: required when data.source is camus")
        if not Path(path).exists():
            raise ConfigError(f"config key data.camus_path: {path} does not exist")
    split = data["split"]
    if split not in ("official", "seed"):
        folder = Path(split)
        if not folder.is_dir():
            raise ConfigError(
                f"config key data.split: {split!r} is neither 'official', 'seed' nor an existing folder"
            )
        for name in ("training", "validation", "testing"):
            if not (folder / f"subgroup_{name}.txt").is_file():
                raise ConfigError(f"config key data.split: {folder} has no subgroup_{name}.txt")
    train = config.get("train", {})
    weights = train.get("perceptual_weights")
    if weights and not Path(weights).is_file():
        raise ConfigError(f"config key train.perceptual_weights: {weights} is not a file")
    ups = {"normal": 5, "more": 6, "most": 7}[train.get("num_upsampling_layers", "normal")]
    size = data["image_size"]
    if size % (2**ups) != 0:
        raise ConfigError(
            f"config key data.image_size: {size} is not divisible by 2**{ups}, as "
            f"train.num_upsampling_layers={train.get('num_upsampling_layers', 'normal')} needs"
        )
    sample = config.get("sample", {})
    if sample.get("samples_per_mask", 1) > 1 and not train.get("use_vae", False):
        raise ConfigError(
            "config key sample.samples_per_mask: values above 1 need train.use_vae: true; the "
            "mask-only generator makes the same image for every sample of a mask"
        )
    if sample.get("mask_path") and not Path(sample["mask_path"]).exists():
        raise ConfigError(f"config key sample.mask_path: {sample['mask_path']} does not exist")
    scale = sample.get("augment", {}).get("scale")
    if scale and scale[0] > scale[1]:
        raise ConfigError(f"config key sample.augment.scale: {scale} must be [low, high]")
    export = config.get("export", {})
    if (export.get("nnunet", {}).get("test_split") and "nnunet" in export.get("formats", [])
            and "test" in sample.get("mask_splits", [])):
        raise ConfigError(
            "config key export.nnunet.test_split: the real test split cannot be held out when "
            "sample.mask_splits draws synthetic images from its masks (remove test from it)"
        )
    evaluate = config.get("evaluate", {})
    inception = evaluate.get("inception_weights")
    if inception and not Path(inception).is_file():
        raise ConfigError(f"config key evaluate.inception_weights: {inception} is not a file")


def config_hash(obj: Any) -> str:
    """sha256 of a config (section) in canonical JSON form: key order and comments do not matter."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
