"""cardiGAN: synthetic labelled echocardiograms from CAMUS with a SPADE GAN."""

import importlib

from cardigan.core.version import __version__

__all__ = ["Generated", "__version__", "generate"]


def __getattr__(name: str):
    """``cardigan.generate`` and ``cardigan.Generated``, loaded on first use: every stage script
    imports the package, and a stage must depend only on the code it runs (the workflow reruns
    a stage when the source its script reaches changes, ``cardigan.core.code_fingerprint``)."""
    if name in ("generate", "Generated"):
        module = importlib.import_module(".synth.generate", __name__)
        globals().update(generate=module.generate, Generated=module.Generated)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
