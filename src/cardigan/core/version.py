"""The installed package's version (``cardigan.__version__``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cardigan")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
