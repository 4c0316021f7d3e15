"""Which training state a run may continue: the fingerprint of everything that determines the
trained weights (not the number of epochs, which only says how far training goes)."""

from __future__ import annotations

from typing import Any

from cardigan.core.code_fingerprint import code_fingerprint
from cardigan.gan.train_config import TrainConfig

#: Bumped when the same settings would train other weights (2: fused SPADE layout, KL per
#: sample), so that states of the earlier code are left alone instead of resumed.
TRAINER_VERSION = 2
THROUGHPUT_NAME = "throughput.csv"  # timings: beside the outputs, deliberately not declared
#: Settings that do not change the trained weights (or, for epochs, only how far training goes):
#: left out of the state fingerprint so that changing them resumes instead of retraining.
NOT_FINGERPRINTED = ("epochs", "log_every", "checkpoint_every", "sample_every", "device", "gpus",
                     "amp", "channels_last", "compile")


def fingerprinted_settings(cfg: TrainConfig, image_size: int, data_hash: str) -> dict[str, Any]:
    """Everything that determines the trained weights, apart from the number of epochs."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in NOT_FINGERPRINTED}
    if not cfg.network["use_vae"]:
        settings.pop("lambda_kld")  # unused: changing it must not throw a state away
    if not cfg.perceptual_weights:
        settings.pop("lambda_vgg")
    if not cfg.diffaug:
        settings.pop("diffaug")  # off: the fingerprint of states trained before it existed
    if not cfg.lambda_l1:
        settings.pop("lambda_l1")  # off: the fingerprint of states trained before it existed
    if not (cfg.l1_balance and cfg.lambda_l1):
        settings.pop("l1_balance")  # off or unused: the fingerprint of states from before it
    if not cfg.r1_gamma:
        settings.pop("r1_gamma")  # off: the fingerprint of states trained before it existed
        settings.pop("r1_every")
    if settings["ema_warmup"] == 10:
        settings.pop("ema_warmup")  # the warm-up that states trained before it existed used
    if settings["lr_decay_start"] == 0.5:
        settings.pop("lr_decay_start")  # the half that states trained before it existed used
    model = cfg.model_config(image_size).to_dict()
    if not model["background_classes"]:
        model.pop("background_classes")  # off: the fingerprint of states trained before it existed
    if model["discriminator"] == "patchgan":
        model.pop("discriminator")  # the fingerprint of states trained before it existed
        settings.pop("lambda_labelmix")  # unused: changing it must not throw a state away
    # The model code too: weights trained by other network code are never resumed.
    return {"model": model, "train": settings, "data": data_hash,
            "trainer": TRAINER_VERSION, "model_code": code_fingerprint("cardigan.gan.model")}
