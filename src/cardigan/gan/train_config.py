"""The ``train`` section of the config as the training loop reads it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cardigan.core.config import ConfigError, check_values
from cardigan.core.defaults import load_schema, schema_defaults
from cardigan.gan.model_config import ModelConfig

#: The train section's keys that describe the networks (ModelConfig's fields but the image size,
#: which is data.image_size).
NETWORK_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "image_size")


@dataclass(frozen=True)
class TrainConfig:
    """How the networks are trained, and the networks' own settings (``network``: the keys of
    :data:`NETWORK_KEYS`, turned into a :class:`ModelConfig` by :meth:`model_config`).

    Built by :meth:`from_dict` from a ``train`` section: missing keys take the schema's defaults
    and every value is checked against the schema, so neither lives here a second time.
    """

    network: Mapping[str, Any]
    device: str
    gpus: int
    seed: int
    epochs: int
    batch_size: int
    lr_G: float
    lr_D: float
    lr_decay_start: float
    beta1: float
    beta2: float
    lambda_feat: float
    lambda_kld: float
    lambda_vgg: float
    lambda_l1: float
    l1_balance: bool
    perceptual_weights: str | None
    diffaug: str
    lambda_labelmix: float
    r1_gamma: float
    r1_every: int
    ema_decay: float
    ema_warmup: float
    amp: bool
    channels_last: bool
    compile: bool
    log_every: int
    checkpoint_every: int
    sample_every: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None) -> TrainConfig:
        """From ``config['train']`` (or part of it); unknown keys and wrong values raise
        ConfigError (a ValueError) naming them."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(schema_defaults()["train"]))
        if unknown:
            raise ConfigError(f"unknown train setting(s): {', '.join('train.' + k for k in unknown)}")
        check_values("train", d)
        values = {**schema_defaults()["train"], **d}
        # YAML writes 1e-4 as a float but 1 as an int: normalise so the fingerprint does not care.
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        own = {k: float(v) if types[k] == "float" else v
               for k, v in values.items() if k not in NETWORK_KEYS}
        return cls(network={k: values[k] for k in NETWORK_KEYS}, **own)

    def to_dict(self) -> dict[str, Any]:
        """The flat ``train`` section, in the schema's key order."""
        flat = {**self.network, **{f.name: getattr(self, f.name)
                                   for f in dataclasses.fields(self) if f.name != "network"}}
        return {k: flat[k] for k in load_schema()["properties"]["train"]["properties"]}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some keys of the flat section changed (network keys included)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def model_config(self, image_size: int) -> ModelConfig:
        return ModelConfig(image_size=image_size, **self.network)
