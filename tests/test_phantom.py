"""The CAMUS-like phantom: layout, file contents, anatomy, determinism and the command line."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cardigan.cli import main as cli_main
from cardigan.phantom import write as phantom
from cardigan.phantom.write import split_counts, write_phantom

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
    enclosed = []
    for pdir in sorted((full / "database_nifti").iterdir()):
        spec = phantom.draw_patient(0, int(pdir.name[-4:]) - 1)
        for v in VIEWS:
            half_deg = np.degrees(spec.views[v].half_angle)
            assert 30 <= half_deg <= 42.5  # sectors of 60-85 degrees
            areas = {}
            for inst in ("ED", "ES"):
                im, sp_im = read(pdir / f"{pdir.name}_{v}_{inst}.nii.gz")
                gt, sp_gt = read(pdir / f"{pdir.name}_{v}_{inst}_gt.nii.gz")
                h, w = im.shape
                assert im.dtype == np.uint8 and gt.dtype == np.uint8 and gt.shape == (h, w)
                # Depth 12-17 cm at a ~0.154 mm axial spacing; the width follows the sector.
                assert 750 <= h <= 1140 and 0.47 < w / h < 0.70
                assert w / h == pytest.approx(2 * np.sin(np.radians(half_deg)) * sp_im[1] / sp_im[0], abs=0.01)
                # Spacing (column mm, row mm) from the header: anisotropic, rows finer.
                assert sp_im == pytest.approx(sp_gt)
                assert 0.14 < sp_im[1] < 0.17 and 0.28 < sp_im[0] < 0.34
                assert set(np.unique(gt)) == {0, 1, 2, 3}
                assert 120 <= h * sp_im[1] <= 171
                # The fan, apex at the top centre: image and mask are zero outside it.
                y = (np.arange(h)[:, None] + 0.5) * sp_im[1]
                x = (np.arange(w)[None, :] - (w - 1) / 2) * sp_im[0]
                angle = np.degrees(np.abs(np.arctan2(x, y)))
                outside = (np.hypot(x, y) > h * sp_im[1] + 1) | (angle > half_deg + 0.5)
                inside = (np.hypot(x, y) < h * sp_im[1] - 3) & (angle < half_deg - 1.5)
                assert im[outside].max() == 0 and gt[outside].max() == 0
                assert (im[inside] > 0).mean() > 0.8
                # Apex at the top: LV above the mitral plane, LA below it.
                rows = {lab: np.nonzero((gt == lab).any(1))[0] for lab in (1, 2, 3)}
                assert rows[2].min() < rows[1].min() < rows[3].min()
                # The mitral plane may be oblique (tilted LV) but the LA lies below the cavity.
                assert rows[3].min() > rows[1].max() - 12 / sp_im[1]
                assert rows[3].mean() > rows[1].mean() + 30 / sp_im[1]
                assert rows[1].min() * sp_im[1] < 50  # the apex is near the probe
                assert rows[3].min() - rows[1].min() > 35 / sp_im[1]  # even foreshortened
                assert gt[: rows[2].min()].max() == 0
                # The myocardium encloses the cavity from the sides (unless the lateral wall
                # leaves the fan): at the cavity's middle row label 2 lies left and right of 1.
                mid = (rows[1].min() + rows[1].max()) // 2
                cols1, cols2 = np.nonzero(gt[mid] == 1)[0], np.nonzero(gt[mid] == 2)[0]
                enclosed.append(cols2.min() < cols1.min() and cols2.max() > cols1.max())
                # Ultrasound look: blood darker than myocardium, speckle (not flat regions).
                assert im[gt == 1].mean() + 10 < im[gt == 2].mean()
                assert im[gt == 2].std() > 10
                areas[inst] = (gt == 1).sum()
            assert areas["ES"] < areas["ED"]
    assert np.mean(enclosed) >= 0.75


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


def test_views_differ_right_heart_only_in_4ch():
    """2CH has no right heart: the 4CH tissue map has right-heart blood beside the septum."""
    from cardigan.phantom.heart import RBLOOD, tissue_map

    for i in range(4):
        p = phantom.draw_patient(0, i)
        maps = {}
        for v in VIEWS:
            h = p.views[v].ed
            ys, xs = np.mgrid[0:150:0.5, -80:80:0.5]
            maps[v] = tissue_map(h, xs.astype(np.float32), ys.astype(np.float32))
        assert (maps["4CH"] == RBLOOD).mean() > 0.02
        # In 2CH only the descending aorta (if in the plane) carries unlabelled blood.
        assert (maps["2CH"] == RBLOOD).mean() < (maps["4CH"] == RBLOOD).mean() / 3


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
    small = ["--set", "phantom.valid_patients=null", "--set", "phantom.test_patients=null"]
    assert cli_main(["phantom", str(out), "--set", "phantom.patients=3", "--set", "phantom.seed=0",
                     *small, "--threads", "2", "--no-sequences"]) == 0
    assert digests(out) == digests(lean)
    # Refuses to overwrite; bad patient counts are named errors.
    assert cli_main(["phantom", str(out), "--set", "phantom.patients=3", *small]) == 1
    assert cli_main(["phantom", str(tmp_path / "x"), "--set", "phantom.patients=2", *small]) == 1
    # the default config's 5 + 20 held-out patients leave none for training: a config error
    assert cli_main(["phantom", str(tmp_path / "z"), "--set", "phantom.patients=20"]) == 1
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


# --- Variation between acquisitions: what makes the phantom as hard as CAMUS -----------------


def _first(grade: str, n: int) -> list[int]:
    return [i for i in range(100) if phantom.draw_patient(0, i).quality == grade][:n]


def test_quality_shares_and_geometry_vary():
    specs = [phantom.draw_patient(0, i) for i in range(200)]
    shares = {g: np.mean([p.quality == g for p in specs]) for g in ("Good", "Medium", "Poor")}
    assert 0.25 < shares["Good"] < 0.45 and 0.3 < shares["Medium"] < 0.5 and 0.17 < shares["Poor"] < 0.33
    views = [p.views[v] for p in specs for v in VIEWS]
    depth = np.array([s.depth_mm for s in views])
    half = np.degrees([s.half_angle for s in views])
    height = np.array([s.height for s in views])
    assert depth.min() < 130 and depth.max() > 160
    assert half.min() < 32 and half.max() > 41
    # At a fixed axial spacing the image height follows the depth.
    assert height.max() - height.min() > 250
    row_mm = np.array([s.row_mm for s in views])
    np.testing.assert_allclose(height * row_mm, depth, atol=0.2)
    # Heart position and shape differ between patients.
    eds = [s.ed for s in views]
    assert np.ptp([h.apex_y for h in eds]) > 25 and np.ptp(np.degrees([h.tilt for h in eds])) > 20
    assert np.ptp([h.wall for h in eds]) > 5 and np.ptp([h.length for h in eds]) > 30
    rv = [s.ed.rv_width for s in views if s.view == "4CH"]
    assert min(rv) < 20 and max(rv) > 35


def test_quality_shares_change_only_the_grade():
    hard = {"Good": 0.1, "Medium": 0.4, "Poor": 0.5}
    base = [phantom.draw_patient(0, i) for i in range(200)]
    harder = [phantom.draw_patient(0, i, hard) for i in range(200)]
    poor = [sum(p.quality == "Poor" for p in specs) for specs in (base, harder)]
    assert 35 < poor[0] < 65 and 80 < poor[1] < 120
    # Only the grade changes: a patient's anatomy and acquisition geometry stay the same.
    for a, b in zip(base, harder):
        assert (a.sex, a.age, a.frame_rate) == (b.sex, b.age, b.frame_rate)
        for v in VIEWS:
            assert dataclasses.replace(a.views[v], quality="") == dataclasses.replace(b.views[v], quality="")
    # The default shares are the schema's, written out or left out.
    assert [p.quality for p in base] == [
        phantom.draw_patient(0, i, {"Good": 0.35, "Medium": 0.40, "Poor": 0.25}).quality
        for i in range(200)]
    assert {phantom.draw_patient(0, i, {"Good": 0, "Medium": 0, "Poor": 1}).quality
            for i in range(20)} == {"Poor"}


@pytest.mark.parametrize(("shares", "needle"), [
    ({"Good": 0.5, "Medium": 0.5}, "a share for each of Good, Medium, Poor"),
    ({"Good": 0.5, "Medium": 0.5, "Poor": 0.5}, "must sum to 1, got 1.5"),
    ({"Good": -0.5, "Medium": 1, "Poor": 0.5}, "phantom.quality_shares.Good must be a number"),
    ({"Good": "a", "Medium": 1, "Poor": 0}, "phantom.quality_shares.Good must be a number"),
])
def test_bad_quality_shares_are_named(shares, needle, tmp_path):
    with pytest.raises(ValueError, match=needle):
        write_phantom(tmp_path / "out", patients=3, sequences=False, quality_shares=shares)
    assert not (tmp_path / "out").exists()


def test_all_poor_phantom_writes_the_grade(tmp_path):
    root = write_phantom(tmp_path / "poor", patients=3, sequences=False,
                         quality_shares={"Good": 0, "Medium": 0, "Poor": 1})
    for pdir in (root / "database_nifti").iterdir():
        for v in VIEWS:
            assert read_cfg(pdir / f"Info_{v}.cfg")["ImageQuality"] == "Poor"


def test_sector_angle_seen_in_images():
    """The fan's opening, measured on the written image, is the patient's own."""
    specs = {i: phantom.draw_patient(0, i).views["2CH"] for i in range(30)}
    narrow = min(specs, key=lambda i: specs[i].half_angle)
    wide = max(specs, key=lambda i: specs[i].half_angle)
    measured = {}
    for i in (narrow, wide):
        im, _ = phantom.render_patient(0, i, sequences=False)["views"]["2CH"][0]
        s = specs[i]
        row = int(0.6 * s.height)
        cols = np.nonzero(im[row] > 0)[0]
        x = (cols.max() - (im.shape[1] - 1) / 2) * s.col_mm
        measured[i] = np.degrees(np.arctan2(x, (row + 0.5) * s.row_mm))
        assert measured[i] == pytest.approx(np.degrees(s.half_angle), abs=1.5)
    assert measured[wide] - measured[narrow] > 8


def test_quality_grade_changes_contrast():
    """Blood/myocardium contrast (grey levels) is clearly lower in Poor images than in Good ones."""
    contrast = {}
    for grade in ("Good", "Poor"):
        values = []
        for i in _first(grade, 3):
            frames = phantom.render_patient(0, i, sequences=False)["views"]["4CH"]
            im, gt = frames[0]
            values.append(im[gt == 2].mean() - im[gt == 1].mean())
        contrast[grade] = np.mean(values)
    assert contrast["Good"] > contrast["Poor"] + 40
    assert contrast["Poor"] > 0


def test_speckle_decorrelates_between_frames():
    """Speckle is not a fixed texture: ED and ES differ even where nothing is labelled."""
    res = phantom.render_patient(0, 0, sequences=True)
    frames = res["views"]["4CH"]
    n = res["spec"].views["4CH"].nb_frames
    still = np.logical_and.reduce([frames[k][1] == 0 for k in range(n)]) & (frames[0][0] > 20)

    def fine(k):  # speckle: the image minus its local mean
        im = frames[k][0].astype(np.float32)
        from scipy import ndimage
        return (im - ndimage.uniform_filter(im, 9))[still]

    def corr(a, b):
        return float(np.corrcoef(fine(a), fine(b))[0, 1])

    ed_es, neighbours = corr(0, n - 1), corr(0, 1)
    assert ed_es < 0.45
    assert neighbours > ed_es + 0.15


def test_wall_dropout_fades_a_segment():
    """A dropout segment of the lateral wall or septum is darker than the rest of that wall.

    Checked on a Good/Medium exam: in Poor ones the near-field haze fills the faded segment.
    """
    from scipy import ndimage

    from cardigan.phantom.heart import lv_axes
    from cardigan.phantom.imaging import Imager

    found = None
    for i in range(30):
        p = phantom.draw_patient(0, i)
        for vi, v in enumerate(VIEWS):
            if found or p.quality == "Poor":
                continue
            segs = Imager(p.views[v], 0, vi).dropout
            for side in (1, -1):
                mine = [s for s in segs if s[0] == side]
                if len(mine) == 1 and mine[0][3] > 0.8 and 0.35 < mine[0][1] < 0.75:
                    found = (i, v, mine[0])
    assert found, "no Good/Medium exam with a single deep dropout segment among the first 30"
    i, v, (side, centre, width, _) = found
    spec = phantom.draw_patient(0, i).views[v]
    im, gt = phantom.render_patient(0, i, sequences=False)["views"][v][0]
    ys = (np.arange(im.shape[0], dtype=np.float32)[:, None] + 0.5) * spec.row_mm
    xs = (np.arange(im.shape[1], dtype=np.float32)[None, :] - (im.shape[1] - 1) / 2) * spec.col_mm
    u, w = lv_axes(spec.ed, xs, ys)
    t = u / spec.ed.length
    # The endocardial half of the wall (away from the bright pericardium).
    wall = (gt == 2) & ndimage.binary_dilation(gt == 1, iterations=8) & (w * side > 0)
    faded = wall & (np.abs(t - centre) < 0.5 * width)
    kept = wall & (np.abs(t - centre) > 2.5 * width) & (t > 0.1) & (t < 1)
    assert faded.sum() > 200 and kept.sum() > 200
    assert im[faded].mean() < im[kept].mean() - 15


def test_split_sizes_can_be_chosen():
    from cardigan.phantom.write import split_counts

    assert split_counts(50) == (40, 5, 5)  # CAMUS-like 80/10/10 by default
    assert split_counts(65, 5, 20) == (40, 5, 20)
    with pytest.raises(ValueError, match="no training patient"):
        split_counts(10, 5, 5)
    with pytest.raises(ValueError, match="test_patients"):
        split_counts(10, None, 0)
