"""The ``Info_{view}.cfg`` files: ``Key: value`` lines with ED/ES frame numbers and patient facts."""

from __future__ import annotations

from pathlib import Path

from cardigan.data.camus.records import CamusError

#: cfg key -> metadata column. EF is ``EF`` in the 2023 release and ``LVef`` in the 2019 one.
_COLUMNS = {
    "ImageQuality": "image_quality",
    "EF": "ef",
    "LVef": "ef",
    "Age": "age",
    "Sex": "sex",
    "FrameRate": "frame_rate",
}
_NUMERIC = {"ef", "age", "frame_rate"}


def parse_info_cfg(path: str | Path) -> dict[str, str]:
    """Key -> value of one Info cfg. Raises CamusError naming the file on any malformed line."""
    path = Path(path)
    if not path.is_file():
        raise CamusError(f"{path}: Info cfg file is missing")
    text = path.read_text(errors="replace")
    if not text.strip():
        raise CamusError(f"{path}: Info cfg file is empty")
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip() or not value.strip():
            raise CamusError(f"{path}: line {i} {line.strip()!r} is not 'Key: value'")
        out[key.strip()] = value.strip()
    return out


def frame_info(path: str | Path) -> dict:
    """The metadata of one view's cfg: 1-indexed ``ED``/``ES`` frames, ``nb_frames`` and patient facts.

    ED and ES are frame numbers counted from 1 in the recording; ES may come before ED (recordings
    that start in systole), which is valid. Both must lie in 1..NbFrame when NbFrame is given.
    """
    path = Path(path)
    cfg = parse_info_cfg(path)
    frames: dict[str, int] = {}
    for key in ("ED", "ES", "NbFrame"):
        if key not in cfg:
            if key == "NbFrame":
                continue
            raise CamusError(f"{path}: Info cfg has no {key} line")
        try:
            frames[key] = int(cfg[key])
        except ValueError:
            raise CamusError(f"{path}: {key} is {cfg[key]!r}, not a whole frame number") from None
    nb = frames.get("NbFrame")
    for key in ("ED", "ES"):
        if frames[key] < 1 or (nb is not None and frames[key] > nb):
            raise CamusError(
                f"{path}: {key} frame {frames[key]} is outside 1..{nb if nb is not None else 'inf'}"
                " (frames are numbered from 1)"
            )
    info: dict = {"ED": frames["ED"], "ES": frames["ES"], "nb_frames": nb}
    for key, column in _COLUMNS.items():
        if key in cfg:
            value: object = cfg[key]
            if column in _NUMERIC:
                try:
                    value = float(cfg[key])
                except ValueError:
                    raise CamusError(f"{path}: {key} is {cfg[key]!r}, not a number") from None
            info[column] = value
    return info
