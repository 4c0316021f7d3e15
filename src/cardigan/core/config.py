"""Configuration: JSON-Schema validation with defaults, semantic checks, and config hashing.

The schema (``workflow/schemas/config.schema.yaml``) says what each key may hold; this module
fills in defaults, turns the first violation into one line that names the key, and adds the checks
a schema cannot express (paths that must exist, combinations of settings).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cardigan.core.defaults import SCHEMA_PATH, load_schema
from cardigan.core.image_quality import quality_probabilities

log = logging.getLogger("cardigan")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


#: Values renamed since: (section, key) -> {old: new}. The old value still works, with a warning.
RENAMED_VALUES = {("data", "format"): {"seed_h5": "legacy_h5"},
                  ("data", "split"): {"seed": "patient_order"}}

#: The generator's doublings of its start map for each ``train.num_upsampling_layers``.
UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _with_defaults(cls):
    """``cls`` that, validating an object, fills in the defaults of its missing keys and puts its
    keys in the schema's order (keys the schema does not list after them, sorted).

    Without one order a key's position would depend on where it came from (the config file,
    ``--config`` or a default filled in), and Snakemake compares a rule's params by their
    ``repr``: ``--config 'train={seed: 0}'`` (the default value) would look like a change and
    re-run training and everything after it.
    """
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
            order = [k for k in properties if k in instance]
            for key in order + sorted(k for k in instance if k not in properties):
                instance[key] = instance.pop(key)
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)

_NULLS = ("null", "~", "none", "")
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/definitions/...``), keeping sibling keys such as ``default``."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    target: Any = root
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}


def _convert(text: str, types: list[str]) -> Any:
    """``text`` as the first of ``types`` it parses as; ValueError when none fits."""
    low = text.strip().lower()
    if "null" in types and low in _NULLS:
        return None
    if "boolean" in types and low in _BOOLS:
        return _BOOLS[low]
    if "integer" in types:
        try:
            return int(text.strip())
        except ValueError:
            pass
    if "number" in types:
        try:
            value = float(text.strip())
        except ValueError:
            pass
        else:
            if value == value and abs(value) != float("inf"):  # NaN/inf never mean a setting
                return value
    raise ValueError(text)


def coerce(config: Any, schema: dict[str, Any], root: dict[str, Any] | None = None,
           path: tuple = ()) -> Any:
    """Turn strings into the integers, numbers, booleans or nulls the schema expects.

    Snakemake reads a nested ``--config 'train={epochs: 300}'`` with every scalar a string
    (``'300'``); a key whose schema type does not include ``string`` gets its string converted
    here, inside nested sections and lists too. A string that does not convert raises ConfigError
    naming the key, the value and the expected type. Returns the (possibly new) value; dicts and
    lists are updated in place.
    """
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if isinstance(config, dict):
        props = schema.get("properties", {})
        for key, value in config.items():
            if key in props:
                config[key] = coerce(value, props[key], root, (*path, key))
        return config
    if isinstance(config, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, value in enumerate(config):
                config[i] = coerce(value, items, root, (*path, i))
        return config
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if isinstance(config, str) and "null" in types and config.strip() in ("null", "Null", "NULL", "~"):
        return None  # YAML's nulls, even where a string is allowed (a path named "null" is not)
    if isinstance(config, str) and types and "string" not in types:
        try:
            return _convert(config, types)
        except ValueError:
            expected = " or ".join("a number" if t == "number" else f"{'an' if t[0] in 'aeiou' else 'a'} {t}"
                                   for t in types)
            raise ConfigError(f"config key {_key_path(path)}: {config!r} is not {expected}") from None
    return config


def validate(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Convert command-line strings (:func:`coerce`), fill defaults into ``config`` and put its
    keys in the schema's order (in place), and validate it; return it.

    Raises ConfigError with one line naming the offending key, e.g.
    ``config key data.views[0]: '3CH' is not one of ['2CH', '4CH']``.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    _rename_values(config)
    coerce(config, schema)
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        key = _key_path(err.absolute_path)
        if err.validator == "additionalProperties":
            raise ConfigError(f"config key {key}: {err.message} (unknown key: check its spelling)")
        raise ConfigError(f"config key {key}: {err.message}")
    check_semantics(config)
    return config


def _rename_values(config: dict[str, Any]) -> None:
    """Replace the old names of :data:`RENAMED_VALUES` with the new ones, warning once each."""
    for (section, key), renames in RENAMED_VALUES.items():
        values = config.get(section)
        old = values.get(key) if isinstance(values, dict) else None
        if isinstance(old, str) and old in renames:
            log.warning("config key %s.%s: %r is deprecated, use %r (same meaning)", section, key,
                        old, renames[old])
            values[key] = renames[old]


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (``value`` read as YAML, nested keys allowed) to ``config``."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {assignment}: expected section.key=value, e.g. train.epochs=300")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML ({err.problem})") from err
    node = config
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: {'.'.join(parts[: i + 1])} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a cardiGAN config YAML (``None``: an empty one), apply ``section.key=value``
    ``overrides`` and validate it, defaults filled in."""
    config: dict[str, Any] = {}
    if path is not None:
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"config file {path}: {err}") from err
        if not isinstance(config, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(config).__name__}")
    for assignment in overrides:
        apply_override(config, assignment)
    return validate(config)


def check_semantics(config: Mapping[str, Any]) -> None:
    """Checks a schema cannot express, on a config with its defaults filled in. Raises ConfigError
    naming the key."""
    data = config["data"]
    if data["source"] == "camus":
        path = data["camus_path"]
        if not path:
            raise ConfigError("config key data.camus_path: required when data.source is camus")
        if not Path(path).exists():
            raise ConfigError(f"config key data.camus_path: {path} does not exist")
    phantom = config["phantom"]
    held_out = (phantom["valid_patients"] or 1) + (phantom["test_patients"] or 1)
    if data["source"] == "phantom" and phantom["patients"] <= held_out:
        raise ConfigError(
            f"config key phantom.patients: {phantom['patients']} leaves no training patient "
            f"after phantom.valid_patients and phantom.test_patients ({held_out} in all)")
    try:
        quality_probabilities(phantom["quality_shares"])
    except ValueError as err:
        raise ConfigError(f"config key {err}") from None
    split = data["split"]
    if split not in ("official", "patient_order"):
        folder = Path(split)
        if not folder.is_dir():
            raise ConfigError(
                f"config key data.split: {split!r} is neither 'official', 'patient_order' nor an existing folder"
            )
        for name in ("training", "validation", "testing"):
            if not (folder / f"subgroup_{name}.txt").is_file():
                raise ConfigError(f"config key data.split: {folder} has no subgroup_{name}.txt")
    train = config["train"]
    weights = train["perceptual_weights"]
    if weights and not Path(weights).is_file():
        raise ConfigError(f"config key train.perceptual_weights: {weights} is not a file")
    check_model(train, data["image_size"])
    if train["r1_gamma"] > 0 and train["discriminator"] != "patchgan":
        raise ConfigError(
            f"config key train.r1_gamma: the R1 penalty is for the patchgan discriminator, not "
            f"train.discriminator: {train['discriminator']} (set r1_gamma: 0)"
        )
    sample = config["sample"]
    styled = train["use_vae"] or train["noise_dim"] > 0 or train["texture_noise"]
    if sample["samples_per_mask"] > 1 and not styled:
        raise ConfigError(
            "config key sample.samples_per_mask: values above 1 need a style input (train.use_vae, "
            "train.noise_dim > 0 or train.texture_noise); the mask-only generator makes the same "
            "image for every sample of a mask"
        )
    if sample["own_styles"] > sample["samples_per_mask"]:
        raise ConfigError(
            f"config key sample.own_styles: {sample['own_styles']} is more than "
            f"sample.samples_per_mask ({sample['samples_per_mask']}), the images made per mask"
        )
    if sample["mask_path"] and not Path(sample["mask_path"]).exists():
        raise ConfigError(f"config key sample.mask_path: {sample['mask_path']} does not exist")
    scale = sample["augment"]["scale"]
    if scale and scale[0] > scale[1]:
        raise ConfigError(f"config key sample.augment.scale: {scale} must be [low, high]")
    export = config["export"]
    if (export["nnunet"]["test_split"] and "nnunet" in export["formats"]
            and "test" in sample["mask_splits"]):
        raise ConfigError(
            "config key export.nnunet.test_split: the real test split cannot be held out when "
            "sample.mask_splits draws synthetic images from its masks (remove test from it)"
        )
    evaluate = config["evaluate"]
    inception = evaluate["inception_weights"]
    if inception and not Path(inception).is_file():
        raise ConfigError(f"config key evaluate.inception_weights: {inception} is not a file")
    finetuned = "finetuned" in evaluate["settings"] or config["label_budget"]["patients"]
    if finetuned and evaluate["iterations"] < 2:
        raise ConfigError(f"config key evaluate.iterations: {evaluate['iterations']}; the "
                          "finetuned setting (and the label-budget curve, which runs it) needs at "
                          "least 2: pretraining and fine-tuning")
    if config["label_budget"]["patients"]:
        arms = load_schema()["properties"]["evaluate"]["properties"]["settings"]["items"]["enum"]
        if not evaluate["enabled"] or set(evaluate["settings"]) != set(arms):
            raise ConfigError(
                "config key label_budget.patients: the label-budget curve compares every arm and "
                "takes its full-split point from the evaluation: it needs evaluate.enabled: true "
                f"and evaluate.settings: {arms} (config/presets/label_budget_cpu.yaml has both)")


def check_values(section: str, values: Mapping[str, Any]) -> None:
    """Check ``values``, some keys of config section ``section``, against the schema's types,
    choices and ranges for them (for settings that do not come through :func:`validate`, such
    as a generator file's); ConfigError naming the first wrong key."""
    schema = load_schema()
    props = schema["properties"][section]["properties"]
    sub = {"type": "object", "properties": {k: props[k] for k in values if k in props},
           "additionalProperties": False, "definitions": schema.get("definitions", {})}
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(sub).iter_errors(
        dict(values)))
    if err is not None:
        key = _key_path(err.absolute_path) if err.absolute_path else ""
        if err.validator == "additionalProperties":
            raise ConfigError(f"config section {section}: {err.message}")
        raise ConfigError(f"config key {section}.{key}: {err.message}")


def check_model(train: Mapping[str, Any], image_size: int) -> None:
    """The network settings' combinations that the schema cannot express: the image size and the
    generator's upsampling depth, the style inputs. ConfigError naming the key."""
    name = train["num_upsampling_layers"]
    ups = UPSAMPLINGS[name]
    factor = 2**ups
    if image_size % factor:
        raise ConfigError(
            f"config key data.image_size: {image_size} is not divisible by 2**{ups} = {factor}, "
            f"as train.num_upsampling_layers={name} needs: use a multiple of {factor} or fewer "
            f"upsampling layers")
    if train["use_vae"] and train["noise_dim"] > 0:
        raise ConfigError(
            "config keys train.use_vae and train.noise_dim: two different style inputs, choose "
            "one (noise_dim: 0 with the VAE)"
        )


def config_hash(obj: Any) -> str:
    """sha256 of a config (section) in canonical JSON form: key order and comments do not matter."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
