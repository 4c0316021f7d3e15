"""The networks' settings: everything needed to rebuild them, stored in every generator file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cardigan.core.config import UPSAMPLINGS, ConfigError, check_model, check_values
from cardigan.core.defaults import default


#: Model settings added after generator files and training states were first written, with the
#: value that a file without them was made with (their schema default has changed since).
ABSENT_MEANS = {"background_classes": 0}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the networks (stored inside every generator file); field
    defaults are the config schema's (``train`` section, ``data.image_size``)."""

    label_nc: int = default("train", "label_nc")
    background_classes: int = default("train", "background_classes")  # gan.background
    image_size: int = default("data", "image_size")
    ngf: int = default("train", "ngf")
    ndf: int = default("train", "ndf")
    num_upsampling_layers: str = default("train", "num_upsampling_layers")  # 5, 6 or 7 ups
    norm_G: str = default("train", "norm_G")  # param-free norm inside SPADE
    norm_D: str = default("train", "norm_D")
    spade_hidden: int = default("train", "spade_hidden")
    discriminator: str = default("train", "discriminator")  # patchgan | oasis
    num_D: int = default("train", "num_D")
    n_layers_D: int = default("train", "n_layers_D")
    use_vae: bool = default("train", "use_vae")
    z_dim: int = default("train", "z_dim")
    noise_dim: int = default("train", "noise_dim")  # OASIS-style 3D noise channels (0: none)
    texture_noise: bool = default("train", "texture_noise")  # per-pixel noise after each block

    def __post_init__(self) -> None:
        # The schema's checks, and its combinations: one home for both (cardigan.core.config).
        fields = self.to_dict()
        image_size = fields.pop("image_size")
        check_values("data", {"image_size": image_size})
        check_values("train", fields)
        check_model(fields, image_size)
        factor = 2**self.n_upsamplings
        if image_size < 2 * factor:
            raise ConfigError(
                f"config key data.image_size: {image_size} with train.num_upsampling_layers="
                f"{self.num_upsampling_layers} gives a 1x1 start map, which SPADE's norm cannot "
                f"normalise: use image_size >= {2 * factor} or fewer upsampling layers")
        if self.num_upsampling_layers == "most" and self.ngf < 2:
            raise ConfigError("config key train.ngf: num_upsampling_layers=most needs ngf >= 2 "
                              "(its last block has ngf/2 channels)")

    @property
    def n_upsamplings(self) -> int:
        return UPSAMPLINGS[self.num_upsampling_layers]

    @property
    def start_size(self) -> int:
        """Side of the generator's first feature map (8 for 256 with 'normal')."""
        return self.image_size // 2**self.n_upsamplings

    @property
    def style_dim(self) -> int:
        """Length of the per-image style vector ``z`` (0: the generator takes none)."""
        if self.use_vae:
            return self.z_dim
        return self.noise_dim

    @property
    def cond_nc(self) -> int:
        """Classes of the map the networks are conditioned on: the mask's labels and the
        background's pseudo-classes (:mod:`cardigan.gan.background`)."""
        return self.label_nc + self.background_classes

    @property
    def seg_nc(self) -> int:
        """Channels of the map every SPADE layer reads: the one-hot condition map (+ the 3D
        noise)."""
        return self.cond_nc + self.noise_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """From a stored model config (generator file, training state). A setting the file
        predates takes the value the file was made with (``ABSENT_MEANS``), not today's default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model setting(s): {', '.join(unknown)}")
        return cls(**{**ABSENT_MEANS, **d})

    @classmethod
    def from_train_config(cls, train: dict, image_size: int) -> ModelConfig:
        """Pick the model fields out of ``config['train']`` (other keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"image_size"}
        return cls(image_size=image_size, **{k: train[k] for k in sorted(names) if k in train})

    def diff(self, other: ModelConfig) -> dict[str, tuple]:
        """``{field: (self_value, other_value)}`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


# --------------------------------------------------------------------------------------------
