"""The CAMUS-like phantom: layout, file contents, anatomy, determinism and the command line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cardigan import phantom
from cardigan.cli import main as cli_main
from cardigan.phantom import split_counts, write_phantom

VIEWS = ("2CH", "4CH")
CFG_KEYS = ["ED", "ES", "NbFrame", "Sex", "Age", "ImageQuality", "EF", "FrameRate"]


def read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing()


def read_cfg(path: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in path.read_text().splitlines())


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """Four patients with half sequences."""
    return write_phantom(tmp_path_factory.mktemp("ph") / "CAMUS_public", patients=4, seed=0)


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    """Three patients without sequences, same seed."""
    return write_phantom(tmp_path_factory.mktemp("ph") / "out", patients=3, seed=0, sequences=False)


def test_layout(full):
    names = [f"patient{i:04d}" for i in range(1, 5)]
    assert sorted(p.name for p in (full / "database_nifti").iterdir()) == names
    for name in names:
        files = {p.name for p in (full / "database_nifti" / name).iterdir()}
        expected = {f"Info_{v}.cfg" for v in VIEWS}
        for v in VIEWS:
            for part in ("ED", "ES", "half_sequence"):
                expected |= {f"{name}_{v}_{part}.nii.gz", f"{name}_{v}_{part}_gt.nii.gz"}
        assert files == expected
    # Nothing else: no temp folder left beside the output.
    assert [p.name for p in full.parent.iterdir()] == ["CAMUS_public"]


def test_splits_partition_patients(full):
    d = full / "database_split"
    parts = [(d / f"subgroup_{s}.txt").read_text().split() for s in ("training", "validation", "testing")]
    assert parts == [["patient0001", "patient0002"], ["patient0003"], ["patient0004"]]
    assert split_counts(500) == (400, 50, 50)
    assert split_counts(50) == (40, 5, 5)
    assert split_counts(3) == (1, 1, 1)


def test_frames_shapes_labels_spacing_orientation(full):
    for pdir in sorted((full / "database_nifti").iterdir()):
        for v in VIEWS:
            areas = {}
            for inst in ("ED", "ES"):
                im, sp_im = read(pdir / f"{pdir.name}_{v}_{inst}.nii.gz")
                gt, sp_gt = read(pdir / f"{pdir.name}_{v}_{inst}_gt.nii.gz")
                h, w = im.shape
                assert im.dtype == np.uint8 and gt.dtype == np.uint8 and gt.shape == (h, w)
                assert 800 <= h <= 1100 and 0.55 < w / h < 0.67
                # Spacing (column mm, row mm) from the header: anisotropic, rows finer.
                assert sp_im == pytest.approx(sp_gt)
                assert 0.14 < sp_im[1] < 0.17 and 0.28 < sp_im[0] < 0.34
                assert set(np.unique(gt)) == {0, 1, 2, 3}
                # Depth 13-16 cm.
                assert 130 <= h * sp_im[1] <= 161
                # A ~75 degree fan with its apex at the top centre: image and mask are zero
                # outside it, the image is not inside it.
                y = (np.arange(h)[:, None] + 0.5) * sp_im[1]
                x = (np.arange(w)[None, :] - (w - 1) / 2) * sp_im[0]
                angle = np.degrees(np.abs(np.arctan2(x, y)))
                outside = (np.hypot(x, y) > h * sp_im[1] + 1) | (angle > 38)
                inside = (np.hypot(x, y) < h * sp_im[1] - 3) & (angle < 36)
                assert im[outside].max() == 0 and gt[outside].max() == 0
                assert (im[inside] > 0).mean() > 0.9
                # Apex at the top: LV above the mitral plane, LA below it.
                rows = {lab: np.nonzero((gt == lab).any(1))[0] for lab in (1, 2, 3)}
                assert rows[2].min() < rows[1].min() < rows[3].min()
                # The mitral plane may be oblique (tilted LV) but the LA lies below the cavity.
                assert rows[3].min() > rows[1].max() - 12 / sp_im[1]
                assert rows[3].mean() > rows[1].mean() + 40 / sp_im[1]
                assert rows[1].min() * sp_im[1] < 40  # the apex is near the probe
                assert rows[3].min() - rows[1].min() > 50 / sp_im[1]  # LV length > 5 cm
                assert gt[: rows[2].min()].max() == 0
                # The myocardium encloses the cavity from the sides: at the cavity's middle row
                # label 2 lies left and right of label 1.
                mid = (rows[1].min() + rows[1].max()) // 2
                cols1, cols2 = np.nonzero(gt[mid] == 1)[0], np.nonzero(gt[mid] == 2)[0]
                assert cols2.min() < cols1.min() and cols2.max() > cols1.max()
                # Ultrasound look: dark blood, bright myocardium, speckle (not flat regions).
                assert im[gt == 1].mean() + 40 < im[gt == 2].mean()
                assert im[gt == 2].std() > 10
                areas[inst] = (gt == 1).sum()
            assert areas["ES"] < areas["ED"]


def test_info_cfg_and_sequences(full):
    for pdir in sorted((full / "database_nifti").iterdir()):
        efs = set()
        for v in VIEWS:
            cfg = read_cfg(pdir / f"Info_{v}.cfg")
            assert list(cfg) == CFG_KEYS
            ed, es, n = int(cfg["ED"]), int(cfg["ES"]), int(cfg["NbFrame"])
            assert 1 <= ed < es <= n and 5 <= n <= 10
            assert cfg["Sex"] in {"M", "F"} and 18 <= int(cfg["Age"]) <= 95
            assert cfg["ImageQuality"] in {"Good", "Medium", "Poor"}
            assert 30 <= int(cfg["EF"]) <= 75 and float(cfg["FrameRate"]) > 0
            efs.add(cfg["EF"])
            seq, sp_seq = read(pdir / f"{pdir.name}_{v}_half_sequence.nii.gz")
            seq_gt, _ = read(pdir / f"{pdir.name}_{v}_half_sequence_gt.nii.gz")
            im_ed, sp = read(pdir / f"{pdir.name}_{v}_ED.nii.gz")
            assert seq.shape == seq_gt.shape == (n, *im_ed.shape) and seq.dtype == np.uint8
            assert sp_seq[:2] == pytest.approx(sp)
            assert set(np.unique(seq_gt)) <= {0, 1, 2, 3}
            # The 1-indexed ED/ES frames of the half sequence are the ED/ES files.
            for inst, k in (("ED", ed), ("ES", es)):
                np.testing.assert_array_equal(seq[k - 1], read(pdir / f"{pdir.name}_{v}_{inst}.nii.gz")[0])
                np.testing.assert_array_equal(seq_gt[k - 1], read(pdir / f"{pdir.name}_{v}_{inst}_gt.nii.gz")[0])
            # The cavity shrinks monotonically from ED to ES.
            cavity = (seq_gt == 1).sum(axis=(1, 2))
            assert (np.diff(cavity) < 0).all()
        assert len(efs) == 1  # patient-level (biplane) EF, as in CAMUS


def test_views_differ_right_heart_only_in_4ch(full):
    """2CH has no right heart: left of the septum the 4CH image has a dark RV, 2CH tissue."""
    pdir = full / "database_nifti" / "patient0001"
    dark = {}
    for v in VIEWS:
        im, _ = read(pdir / f"patient0001_{v}_ED.nii.gz")
        gt, _ = read(pdir / f"patient0001_{v}_ED_gt.nii.gz")
        rows = np.nonzero((gt == 1).any(1))[0]
        band = slice(int(rows.mean()), int(rows.max()))
        cols2 = np.nonzero((gt[band] == 2).any(0))[0]
        left = im[band, max(cols2.min() - 60, 0) : cols2.min() - 10]
        dark[v] = (left < 40).mean()
    assert dark["4CH"] > dark["2CH"] + 0.2


def test_same_seed_same_bytes_and_patient_independent_of_count(full, lean, tmp_path):
    again = write_phantom(tmp_path / "again", patients=3, seed=0, sequences=False)
    assert digests(again) == digests(lean)
    # Patient k does not depend on the number of patients nor on the sequences flag.
    d_full = digests(full / "database_nifti")
    for key, value in digests(lean / "database_nifti").items():
        assert d_full[key] == value, key
    other = write_phantom(tmp_path / "other", patients=3, seed=1, sequences=False)
    d_other = digests(other)
    assert d_other.keys() == digests(lean).keys()
    assert all(d_other[k] != v for k, v in digests(lean).items() if k.endswith(".nii.gz"))


def test_cli_with_workers_matches(lean, tmp_path):
    out = tmp_path / "cli"
    out.mkdir()  # an empty folder (as Snakemake may leave) is filled, not refused
    assert cli_main(["phantom", str(out), "--set", "phantom.patients=3", "--set", "phantom.seed=0",
                     "--threads", "2", "--no-sequences"]) == 0
    assert digests(out) == digests(lean)
    # Refuses to overwrite; bad patient counts are named errors.
    assert cli_main(["phantom", str(out), "--set", "phantom.patients=3"]) == 1
    assert cli_main(["phantom", str(tmp_path / "x"), "--set", "phantom.patients=2"]) == 1
    with pytest.raises(ValueError, match="phantom.patients must be at least 3"):
        write_phantom(tmp_path / "y", patients=2)
    with pytest.raises(FileExistsError, match="not empty"):
        write_phantom(out, patients=3)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    real = phantom._job

    def flaky(args):
        if args[3] == 2:
            raise RuntimeError("disk full")
        return real(args)

    monkeypatch.setattr(phantom, "_job", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        write_phantom(tmp_path / "out", patients=3, sequences=False)
    assert list(tmp_path.iterdir()) == []


def test_mhd2019_layout(lean, tmp_path):
    root = write_phantom(tmp_path / "m", patients=3, seed=0, layout="mhd2019")
    assert sorted(p.name for p in (root / "training").iterdir()) == ["patient0001", "patient0002"]
    assert sorted(p.name for p in (root / "testing").iterdir()) == ["patient0001"]
    pdir = root / "training" / "patient0001"
    header = (pdir / "patient0001_4CH_ED.mhd").read_text()
    im, sp = read(pdir / "patient0001_4CH_ED.mhd")
    assert im.shape[0] == 1 and im.dtype == np.uint8
    assert f"DimSize = {im.shape[2]} {im.shape[1]} 1" in header
    assert (pdir / "patient0001_4CH_ED.raw").stat().st_size == im.size
    gt, _ = read(pdir / "patient0001_4CH_ES_gt.mhd")
    assert set(np.unique(gt)) == {0, 1, 2, 3}
    cfg = read_cfg(pdir / "Info_4CH.cfg")
    assert list(cfg) == ["ED", "ES", "NbFrame", "Sex", "Age", "ImageQuality", "LVedv", "LVesv", "LVef"]
    seq, _ = read(pdir / "patient0001_4CH_sequence.mhd")
    assert seq.shape[0] == int(cfg["NbFrame"])
    np.testing.assert_array_equal(seq[int(cfg["ED"]) - 1], im[0])
    assert float(cfg["LVedv"]) > float(cfg["LVesv"]) > 0
    # Same pixels as the 2023 layout for the same seed and patient.
    np.testing.assert_array_equal(
        read(lean / "database_nifti/patient0001/patient0001_4CH_ED.nii.gz")[0], im[0])
