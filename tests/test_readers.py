"""The CAMUS readers on small fixtures in each on-disk form."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_camus import (
    SPACING,
    make_frame,
    write_cfg,
    write_legacy_h5,
    write_mhd2019,
    write_nifti2023,
)

from cardigan.data.camus import (
    READERS,
    CamusError,
    assign,
    detect_format,
    frame_info,
    patient_order_counts,
    unique_names,
)
from cardigan.data.camus.imageio import read_frame


def test_detect_each_form(tmp_path):
    assert detect_format(write_nifti2023(tmp_path / "a", n=1, split=(1, 0, 0))) == "nifti2023"
    assert detect_format(write_mhd2019(tmp_path / "b", 1, 0)) == "mhd2019"
    assert detect_format(write_legacy_h5(tmp_path / "c.h5", {"train": 1})) == "legacy_h5"
    (tmp_path / "d").mkdir()
    with pytest.raises(CamusError, match="cannot tell the CAMUS form"):
        detect_format(tmp_path / "d")


@pytest.mark.parametrize("form", ["nifti2023", "mhd2019"])
def test_file_reader_orientation_spacing_labels(tmp_path, form):
    root = (write_nifti2023(tmp_path, n=1, split=(1, 0, 0)) if form == "nifti2023"
            else write_mhd2019(tmp_path, 1, 0))
    scan = READERS[form].scan(root)
    assert [p.name for p in scan.patients] == ["patient0001"]
    frames = READERS[form].read_patient(str(root), scan.patients[0], ("4CH",), ("ED", "ES"))
    expected_image, expected_mask = make_frame(60, 40, 10)
    ed = frames[0]
    assert (ed.view, ed.instant) == ("4CH", "ED")
    assert ed.image.shape == (60, 40) and ed.image.dtype == np.uint8
    assert ed.mask.dtype == np.uint8
    np.testing.assert_array_equal(ed.image, expected_image)
    np.testing.assert_array_equal(ed.mask, expected_mask)
    # Apex at the top: bright first rows, LV labels above the atrium.
    assert ed.image[:5].mean() > ed.image[-5:].mean() + 50
    rows_lv = np.nonzero(np.isin(ed.mask, (1, 2)).any(axis=1))[0]
    rows_la = np.nonzero((ed.mask == 3).any(axis=1))[0]
    assert rows_lv.max() < rows_la.min()
    assert set(np.unique(ed.mask)) == {0, 1, 2, 3}
    assert ed.spacing == pytest.approx(SPACING, rel=1e-6)
    assert frames[1].instant == "ES" and (frames[1].mask == 1).sum() < (ed.mask == 1).sum()
    assert ed.info["frame"] == 1 and frames[1].info["frame"] == 12
    assert ed.info["image_quality"] == "Good" and ed.info["ef"] == 55


def test_nibabel_and_simpleitk_agree_on_orientation(tmp_path):
    import SimpleITK as sitk

    root = write_nifti2023(tmp_path, n=1, split=(1, 0, 0))
    path = root / "database_nifti/patient0001/patient0001_4CH_ED.nii.gz"
    ours, spacing = read_frame(path)
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def test_cfg_es_before_ed_is_valid(tmp_path):
    write_cfg(tmp_path / "Info_4CH.cfg", ed=18, es=3)
    info = frame_info(tmp_path / "Info_4CH.cfg")
    assert (info["ED"], info["ES"], info["nb_frames"]) == (18, 3, 20)


def test_cfg_2019_keys(tmp_path):
    (tmp_path / "Info_2CH.cfg").write_text(
        "ED: 1\nES: 15\nNbFrame: 15\nSex: M\nAge: 66\nImageQuality: Medium\n"
        "LVedv: 100.5\nLVesv: 50.1\nLVef: 50.1\n")
    info = frame_info(tmp_path / "Info_2CH.cfg")
    assert info["ef"] == pytest.approx(50.1) and info["sex"] == "M" and info["age"] == 66


def test_cfg_frame_outside_recording(tmp_path):
    write_cfg(tmp_path / "Info_4CH.cfg", ed=0, es=3)
    with pytest.raises(CamusError, match="Info_4CH.cfg: ED frame 0 is outside 1..20"):
        frame_info(tmp_path / "Info_4CH.cfg")


def test_2019_withheld_excluded_and_renamed(tmp_path):
    root = write_mhd2019(tmp_path, n_train=9, n_test=3, withheld=(2,))
    scan = READERS["mhd2019"].scan(root)
    assert scan.withheld == ["testing/patient0002"]
    ids = {p.source_id: (p.name, p.official_split) for p in scan.patients}
    assert ids["training/patient0001"] == ("patient0001", "train")
    assert ids["training/patient0009"] == ("patient0009", "valid")  # last 1 in 9 of training/
    assert ids["testing/patient0001"] == ("patient0010", "test")
    assert ids["testing/patient0003"] == ("patient0012", "test")
    assert "testing/patient0002" not in ids
    assert len({p.name for p in scan.patients}) == len(scan.patients)


def test_unique_names_rules():
    assert unique_names([["patient0001"], ["patient0002"]], ["a", "b"]) == [
        ["patient0001"], ["patient0002"]]
    assert unique_names([["patient0001", "patient0450"], ["patient0001", "patient0050"]],
                        ["a", "b"]) == [["patient0001", "patient0450"], ["patient0451", "patient0500"]]
    with pytest.raises(CamusError, match="b: patient 'x'"):
        unique_names([["x"], ["x"]], ["a", "b"])


@pytest.mark.parametrize("trailing", [False, True])
def test_legacy_h5_reader(tmp_path, trailing):
    path = write_legacy_h5(tmp_path / "s.h5", {"train": 2, "test": 1}, trailing_axis=trailing)
    scan = READERS["legacy_h5"].scan(path)
    assert [(p.name, p.official_split) for p in scan.patients] == [
        ("patient0001", "train"), ("patient0002", "train"), ("patient0003", "test")]
    frames = READERS["legacy_h5"].read_patient(str(path), scan.patients[2], ("4CH",), ("ES",))
    (es,) = frames
    expected_image, expected_mask = make_frame(32, 32, 10 + 6, es=True)
    assert es.image.dtype == np.uint8 and es.image.shape == (32, 32)
    np.testing.assert_array_equal(es.image, expected_image)  # round(x * 255) recovers the bytes
    np.testing.assert_array_equal(es.mask, expected_mask)
    assert es.info["original_size"] == (60, 40)
    assert np.isnan(es.spacing).all()


def test_patient_order_counts_and_assign(tmp_path):
    assert patient_order_counts(500) == (400, 50, 50)
    assert patient_order_counts(12) == (10, 1, 1)
    assert patient_order_counts(2) == (2, 0, 0)
    scan = READERS["mhd2019"].scan(write_mhd2019(tmp_path, 9, 3))
    seed = assign(scan, "patient_order")
    assert list(seed.values()) == ["train"] * 10 + ["valid", "test"]
