"""Code fingerprints: which package files each stage runs, and what changes a fingerprint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cardigan.core.code_fingerprint import (
    _fingerprint,
    differing_files,
    module_closure,
    package_root,
)
from cardigan.gan.fingerprint import fingerprinted_settings
from cardigan.gan.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"


def _closure(stage: str) -> set[str]:
    root = package_root()
    return {p.relative_to(root).as_posix() for p in module_closure([SCRIPTS / f"{stage}.py"])}


def test_each_stage_reaches_the_modules_it_runs_and_no_others():
    closures = {s.stem: _closure(s.stem) for s in SCRIPTS.glob("*.py")}
    assert len(closures) == 11, sorted(closures)
    assert {"gan/train.py", "gan/model.py", "gan/generator.py", "gan/losses.py",
            "gan/checkpoint.py"} <= closures["train"]
    assert {"synth/sample.py", "gan/generator.py", "synth/deform.py", "data/masks.py"} \
        <= closures["sample"]
    assert {"data/extract.py", "data/camus/nifti2023.py", "data/camus/mhd2019.py",
            "data/resize.py"} <= closures["extract"]
    assert {"evaluate/stage.py", "evaluate/segmenter.py"} <= closures["evaluate"]
    # The nnU-Net writer is rule nnunet's alone; the GAN is not extract's, phantom's,
    # evaluate's or nnunet's, and no stage reaches a later one's code.
    assert [s for s, c in closures.items() if "export/nnunet.py" in c] == ["nnunet"]
    gan = {p for c in closures.values() for p in c if p.startswith("gan/")}
    assert not gan & (closures["extract"] | closures["phantom"] | closures["evaluate"]
                      | closures["nnunet"])
    assert not {p for p in closures["train"] if p.startswith(("synth/", "export/", "evaluate/"))}
    # The label-budget curve's scripts: a budget's subset needs no GAN, its GAN no evaluation,
    # and no stage of the main run reaches the curve's code (a curve edit re-runs no GAN).
    assert {"label_budget/subsets.py", "data/frames.py"} <= closures["label_budget_data"]
    assert not {p for p in closures["label_budget_data"] if p.startswith("gan/")}
    assert {"label_budget/training.py", "gan/train.py"} <= closures["label_budget_train"]
    assert not {p for p in closures["label_budget_train"] if p.startswith("evaluate/")}
    assert "label_budget/curve.py" in closures["label_budget"]
    main_run = ("phantom", "extract", "train", "sample", "export", "nnunet", "evaluate", "manifest")
    assert not {p for s in main_run for p in closures[s] if p.startswith("label_budget/")}


def test_fingerprint_follows_content_not_timestamps(tmp_path):
    pkg = tmp_path / "cardigan"
    shutil.copytree(package_root(), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    entries = ("cardigan.gan.model",)
    before = _fingerprint(entries, str(pkg))
    model = pkg / "gan" / "spade.py"
    os.utime(model, (1e9, 1e9))
    _fingerprint.cache_clear()
    assert _fingerprint(entries, str(pkg)) == before
    model.write_text(model.read_text() + "\n# an edit\n")
    _fingerprint.cache_clear()
    assert _fingerprint(entries, str(pkg)) != before


def test_training_state_fingerprint_holds_the_model_code():
    settings = fingerprinted_settings(TrainConfig.from_dict(), 128, "0" * 64)
    root = package_root()
    assert settings["model_code"] == _fingerprint(("cardigan.gan.model",), str(root))


def test_differing_files_names_edited_added_and_missing_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for pkg in (a, b):
        shutil.copytree(package_root(), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (b / "__pycache__").mkdir(exist_ok=True)
    (b / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"compiled")  # not source
    (b / "notes.txt").write_text("not package code")
    os.utime(b / "gan" / "train.py", (1e9, 1e9))  # same content
    assert differing_files(a, b) == []

    (b / "gan" / "model.py").write_text((b / "gan" / "model.py").read_text() + "\n# an edit\n")
    (b / "evaluate" / "extra.py").write_text("x = 1\n")
    (a / "schemas" / "config.schema.yaml").unlink()
    assert differing_files(a, b) == ["evaluate/extra.py", "gan/model.py", "schemas/config.schema.yaml"]
