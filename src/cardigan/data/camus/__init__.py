"""Readers for the three on-disk forms of CAMUS: the 2023 NIfTI release, the 2019 MetaImage
release and the original project's single preprocessed HDF5 (legacy_h5). See ``/docs`` and :mod:`cardigan.data.extract`."""

from cardigan.data.camus.cfg import frame_info, parse_info_cfg
from cardigan.data.camus.detect import READERS, detect_format, resolve_format
from cardigan.data.camus.records import (
    FORMATS,
    CamusError,
    LoadedFrame,
    PatientSource,
    Scan,
    unique_names,
)
from cardigan.data.camus.split import SPLIT_FILES, assign, patient_order_counts

__all__ = [
    "FORMATS", "READERS", "SPLIT_FILES", "CamusError", "LoadedFrame", "PatientSource", "Scan",
    "assign", "detect_format", "frame_info", "parse_info_cfg", "resolve_format", "patient_order_counts",
    "unique_names",
]
