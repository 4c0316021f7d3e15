"""cardiGAN: synthetic labelled echocardiograms from CAMUS with a SPADE GAN."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cardigan")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .generate import Generated, generate  # noqa: E402 (light: heavy imports are deferred)

__all__ = ["Generated", "__version__", "generate"]
