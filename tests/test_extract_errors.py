"""Every bad-input case: a clear error naming the file or patient, and no output left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from fixtures_camus import write_legacy_h5, write_mhd2019, write_nifti2023, write_split

from cardigan.data.camus import CamusError
from cardigan.data.extract import extract

PATIENT = Path("database_nifti/patient0002")


def _fails(source, out: Path, match: str, **kwargs) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "unrelated.txt").write_text("kept")
    with pytest.raises(CamusError, match=match) as err:
        extract(source, out, image_size=16, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == ["unrelated.txt"], "partial output left"
    return str(err.value)


@pytest.fixture
def nifti(tmp_path):
    return write_nifti2023(tmp_path / "camus", n=3, split=(1, 1, 1))


def test_missing_image_file(nifti, tmp_path):
    (nifti / PATIENT / "patient0002_4CH_ES.nii.gz").unlink()
    msg = _fails(nifti, tmp_path / "out", "file is missing")
    assert "patient0002" in msg and "patient0002_4CH_ES.nii.gz" in msg


def test_missing_mask_file_2019_training(tmp_path):
    root = write_mhd2019(tmp_path / "camus", 3, 1)
    (root / "training/patient0002/patient0002_4CH_ED_gt.mhd").unlink()
    msg = _fails(root, tmp_path / "out", "patient0002_4CH_ED_gt.mhd: file is missing")
    assert "training/patient0002" in msg


def test_missing_mask_file_2019_testing_is_not_withheld(tmp_path):
    # testing/ with some ground truth is not "withheld": a missing mask there is an error.
    root = write_mhd2019(tmp_path / "camus", 3, 2)
    (root / "testing/patient0002/patient0002_4CH_ES_gt.mhd").unlink()
    msg = _fails(root, tmp_path / "out", "patient0002_4CH_ES_gt.mhd: file is missing")
    assert "testing/patient0002" in msg


def test_truncated_raw(tmp_path):
    root = write_mhd2019(tmp_path / "camus", 3, 1)
    raw = root / "training/patient0003/patient0003_4CH_ES.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    _fails(root, tmp_path / "out", r"patient0003_4CH_ES.raw: truncated, 1000 bytes .* needs 2400")


def test_truncated_nii_gz(nifti, tmp_path):
    # Noise compresses poorly, so the cut lands in the pixel data. SimpleITK reads the truncated
    # file without error (zero-filled): the reader must refuse it.
    path = nifti / PATIENT / "patient0002_4CH_ED.nii.gz"
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (60, 40), np.uint8))
    sitk.WriteImage(image, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # the silent read we guard against
    msg = _fails(nifti, tmp_path / "out", "corrupt or truncated gzip stream")
    assert "patient0002_4CH_ED.nii.gz" in msg


def test_corrupt_nii_gz(nifti, tmp_path):
    (nifti / PATIENT / "patient0002_4CH_ES_gt.nii.gz").write_bytes(b"not a gzip file at all" * 20)
    _fails(nifti, tmp_path / "out", "patient0002_4CH_ES_gt.nii.gz: cannot read the image header")


def test_mask_values_outside_labels(nifti, tmp_path):
    path = nifti / PATIENT / "patient0002_4CH_ES_gt.nii.gz"
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    mask[5, 5] = 7
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(path))
    msg = _fails(nifti, tmp_path / "out", r"mask values \{7\} are outside the labels 0..3")
    assert "patient0002_4CH_ES_gt.nii.gz" in msg


def test_image_mask_size_mismatch(nifti, tmp_path):
    path = nifti / PATIENT / "patient0002_4CH_ED_gt.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((50, 40), np.uint8)), str(path))
    _fails(nifti, tmp_path / "out",
           "patient0002 4CH ED: image patient0002_4CH_ED.nii.gz is 60x40 but mask "
           "patient0002_4CH_ED_gt.nii.gz is 50x40")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_seed_image(tmp_path, bad):
    path = write_legacy_h5(tmp_path / "seed.h5", {"train": 2, "valid": 1, "test": 1})
    with h5py.File(path, "r+") as f:
        im = f["train/patient0002/4CH/im"]
        data = im[()]
        data[1, 3, 3] = bad
        im[...] = data
    _fails(path, tmp_path / "out", r"train/patient0002: .*train/patient0002/4CH/im holds NaN or inf")


def test_empty_info_cfg(nifti, tmp_path):
    (nifti / PATIENT / "Info_4CH.cfg").write_text("")
    msg = _fails(nifti, tmp_path / "out", "Info_4CH.cfg: Info cfg file is empty")
    assert "patient0002" in msg


def test_malformed_info_cfg(nifti, tmp_path):
    (nifti / PATIENT / "Info_4CH.cfg").write_text("ED: 1\nES = 12\n")
    _fails(nifti, tmp_path / "out", r"patient0002/Info_4CH.cfg: line 2 'ES = 12' is not 'Key: value'")


def test_info_cfg_without_es(nifti, tmp_path):
    (nifti / PATIENT / "Info_4CH.cfg").write_text("ED: 1\nNbFrame: 20\n")
    _fails(nifti, tmp_path / "out", "patient0002/Info_4CH.cfg: Info cfg has no ES line")


def test_split_file_names_missing_patient(nifti, tmp_path):
    with open(nifti / "database_split/subgroup_testing.txt", "a") as f:
        f.write("patient0042\n")
    _fails(nifti, tmp_path / "out", r"subgroup_testing.txt:2: patient 'patient0042' does not exist")


def test_split_folder_names_missing_patient(nifti, tmp_path):
    write_split(tmp_path / "split", ["patient0001", "patient0002", "patient0099"], (1, 1, 1))
    _fails(nifti, tmp_path / "out", r"subgroup_testing.txt:1: patient 'patient0099' does not exist",
           split=str(tmp_path / "split"))


def test_empty_selection(nifti, tmp_path):
    write_split(nifti / "database_split", [], (0, 0, 0))
    _fails(nifti, tmp_path / "out", "empty selection: no patients left")


def test_empty_selection_all_withheld(tmp_path):
    root = write_mhd2019(tmp_path / "camus", 0, 2, withheld=(1, 2))
    _fails(root, tmp_path / "out", r"empty selection: .*2 with withheld ground truth")


def test_all_problems_reported_together(nifti, tmp_path):
    (nifti / "database_nifti/patient0001/Info_4CH.cfg").write_text("")
    (nifti / "database_nifti/patient0003/patient0003_4CH_ED.nii.gz").unlink()
    msg = _fails(nifti, tmp_path / "out", "2 problem")
    assert "patient0001" in msg and "patient0003_4CH_ED.nii.gz" in msg


def test_no_out_dir_created_on_failure(nifti, tmp_path):
    (nifti / PATIENT / "patient0002_4CH_ES_gt.nii.gz").write_bytes(b"\x1f\x8b" + b"x" * 50)
    with pytest.raises(CamusError):
        extract(nifti, tmp_path / "new" / "out", image_size=16, threads=2)
    assert not (tmp_path / "new" / "out").exists()


def test_cli_exit_code(nifti, tmp_path):
    (nifti / PATIENT / "Info_4CH.cfg").write_text("")
    done = subprocess.run([sys.executable, "-m", "cardigan.cli", "extract", str(nifti), str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert "Info_4CH.cfg: Info cfg file is empty" in done.stderr
    assert not (tmp_path / "o").exists()
