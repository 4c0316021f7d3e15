"""The run manifest: every declared output with its sha256, plus the config hash."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cardigan.core.atomic import write_text_atomic
from cardigan.core.checksums import sha256_file


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def write_manifest(outputs: Iterable[str | Path], config_hash: str, out_path: str | Path) -> int:
    """Write ``path<TAB>bytes<TAB>sha256`` for every file of ``outputs`` (folders expanded).

    The first line is a comment holding the config hash. Returns the number of files listed.
    The file is written to a temporary name and renamed, so it is either complete or absent.
    """
    rows = []
    for output in outputs:
        for f in _files(Path(output)):
            rows.append(f"{f.as_posix()}\t{f.stat().st_size}\t{sha256_file(f)}")
    write_text_atomic(out_path, f"# config_sha256\t{config_hash}\npath\tbytes\tsha256\n"
                      + "\n".join(rows) + "\n")
    return len(rows)
