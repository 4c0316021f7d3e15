"""Atomic writes: a file (or a set of files) is complete or absent, never half-written."""

from __future__ import annotations

import os

import pytest

from cardigan.core.atomic import atomic_output, atomic_outputs


def test_files_stand_or_fall_together(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.md"
    a.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_outputs([a, b]) as (ta, tb):
            assert ta.suffix == ".png" and tb.suffix == ".md" and ta.parent == a.parent
            ta.write_text("new")
            raise RuntimeError("the second writer failed")
    assert a.read_text() == "old" and not b.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png"]
    with atomic_outputs([a, b]) as (ta, tb):
        ta.write_text("new")
        tb.write_text("card")
        assert a.read_text() == "old"  # nothing in place before the block ends
    assert a.read_text() == "new" and b.read_text() == "card"


def test_mode_and_unwritable_folder(tmp_path):
    out = tmp_path / "x.txt"
    with atomic_output(out) as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write .*blocker|cannot write .*file"):
        with atomic_output(blocker / "y.txt"):
            pass
