"""Atomic file output: a stage's file is either complete or absent, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _reserve(path: Path, suffix: str) -> Path:
    """Create an empty temporary file beside ``path``, with the usual file mode. Up front, so an
    unwritable folder fails before any work, with an error that names the folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        raise OSError(f"cannot write {path}: the folder {path.parent} is not writable ({err})") from err
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the final file the usual mode
    return Path(tmp)


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.
    On failure the temporary file is removed."""
    with atomic_outputs([path], suffixes=[suffix]) as (tmp,):
        yield tmp


@contextmanager
def atomic_outputs(paths: Sequence[str | Path], suffixes: Sequence[str] | None = None
                   ) -> Iterator[list[Path]]:
    """:func:`atomic_output` for several files that stand or fall together: none is renamed into
    place unless the whole block succeeds. Each temporary file keeps its target's suffix unless
    ``suffixes`` says otherwise (writers such as matplotlib's go by it)."""
    paths = [Path(p) for p in paths]
    suffixes = [p.suffix for p in paths] if suffixes is None else list(suffixes)
    tmps: list[Path] = []
    try:
        for path, suffix in zip(paths, suffixes, strict=True):
            tmps.append(_reserve(path, suffix))
        yield tmps
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, newline="")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``, on
    failure it is deleted. An existing folder at ``path`` is moved aside before the swap and
    deleted after it, so at no moment is neither the old nor the new folder in place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as err:
        raise OSError(f"cannot write {path}: the folder {path.parent} is not writable ({err})") from err
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the final folder the usual mode
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
