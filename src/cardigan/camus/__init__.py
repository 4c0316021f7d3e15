"""Readers for the three on-disk forms of CAMUS: the 2023 NIfTI release, the 2019 MetaImage
release and the seed's preprocessed HDF5. See ``/docs`` and :mod:`cardigan.extract`."""

from .cfg import frame_info, parse_info_cfg
from .detect import READERS, detect_format, resolve_format
from .records import FORMATS, CamusError, LoadedFrame, PatientSource, Scan, unique_names
from .split import SPLIT_FILES, assign, seed_counts

__all__ = [
    "FORMATS", "READERS", "SPLIT_FILES", "CamusError", "LoadedFrame", "PatientSource", "Scan",
    "assign", "detect_format", "frame_info", "parse_info_cfg", "resolve_format", "seed_counts",
    "unique_names",
]
