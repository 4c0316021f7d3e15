"""Code fingerprints: which package files each stage runs, and what changes a fingerprint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cardigan.code_fingerprint import _fingerprint, differing_files, module_closure, package_root
from cardigan.train import TrainConfig, fingerprinted_settings

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"


def _closure(stage: str) -> set[str]:
    root = package_root()
    return {p.relative_to(root).as_posix() for p in module_closure([SCRIPTS / f"{stage}.py"])}


def test_each_stage_reaches_the_modules_it_runs_and_no_others():
    closures = {s.stem: _closure(s.stem) for s in SCRIPTS.glob("*.py")}
    assert len(closures) == 8, sorted(closures)
    assert {"train.py", "model.py", "losses.py", "checkpoint.py"} <= closures["train"]
    assert {"sample.py", "model.py", "augment.py", "masks.py"} <= closures["sample"]
    assert {"extract.py", "camus/nifti2023.py", "camus/mhd2019.py", "resize.py"} <= closures["extract"]
    assert {"evaluate/stage.py", "evaluate/segmenter.py"} <= closures["evaluate"]
    # The nnU-Net writer is rule nnunet's alone; the model is not extract's, phantom's,
    # evaluate's or nnunet's.
    assert [s for s, c in closures.items() if "nnunet.py" in c] == ["nnunet"]
    assert not {"model.py"} & (closures["extract"] | closures["phantom"] | closures["evaluate"]
                               | closures["nnunet"])


def test_fingerprint_follows_content_not_timestamps(tmp_path):
    pkg = tmp_path / "cardigan"
    shutil.copytree(package_root(), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    entries = ("cardigan.model",)
    before = _fingerprint(entries, str(pkg))
    model = pkg / "model.py"
    os.utime(model, (1e9, 1e9))
    _fingerprint.cache_clear()
    assert _fingerprint(entries, str(pkg)) == before
    model.write_text(model.read_text() + "\n# an edit\n")
    _fingerprint.cache_clear()
    assert _fingerprint(entries, str(pkg)) != before


def test_training_state_fingerprint_holds_the_model_code():
    settings = fingerprinted_settings(TrainConfig(), 128, "0" * 64)
    root = package_root()
    assert settings["model_code"] == _fingerprint(("cardigan.model",), str(root))


def test_differing_files_names_edited_added_and_missing_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for pkg in (a, b):
        shutil.copytree(package_root(), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (b / "__pycache__").mkdir(exist_ok=True)
    (b / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"compiled")  # not source
    (b / "notes.txt").write_text("not package code")
    os.utime(b / "train.py", (1e9, 1e9))  # same content
    assert differing_files(a, b) == []

    (b / "model.py").write_text((b / "model.py").read_text() + "\n# an edit\n")
    (b / "evaluate" / "extra.py").write_text("x = 1\n")
    (a / "schemas" / "config.schema.yaml").unlink()
    assert differing_files(a, b) == ["evaluate/extra.py", "model.py", "schemas/config.schema.yaml"]
