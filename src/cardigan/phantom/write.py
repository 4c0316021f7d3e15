"""A deterministic CAMUS-like phantom: apical 2CH/4CH echocardiograms written as the CAMUS release.

It is meant to be as hard as CAMUS in the ways a segmenter feels: each patient has an ImageQuality
grade (Good/Medium/Poor; by default 35/40/25 %, ``phantom.quality_shares``) that sets blood/tissue contrast, cavity clutter, haze and
wall dropout, and each view its own acquisition: depth 12-17 cm (so the image height varies),
sector angle 60-85 degrees, heart position/tilt and foreshortening, gain/TGC/dynamic range/grey
map, shadows and reverberations. This module draws the patients and their acquisition geometry and
writes the files; ``heart_model`` holds the analytic anatomy (labelled LV cavity, myocardium, LA;
unlabelled right heart, valves, papillary muscle, pericardium, ...) and ``echo_imaging`` the
ultrasound look (speckle that decorrelates from ED to ES, PSF, artefacts, scan conversion).

The masks (0 background, 1 LV cavity, 2 LV myocardium, 3 LA) are rasterised from the same analytic
anatomy at the centre of every output pixel, so they are exact on the output grid, contain only
these values, and agree with what the image shows.

Output follows the 2023 NIfTI release (``database_nifti/patientXXXX/...``,
``database_split/subgroup_*.txt``) or, with ``layout="mhd2019"``, the 2019 MetaImage release
(``training/`` and ``testing/``). Randomness comes from ``numpy.random.SeedSequence(seed,
spawn_key=(patient_index, ...))``, so patient *k* is the same whatever the number of patients or
workers, and the files are byte-identical for the same seed (SimpleITK's gzip header carries no
time stamp; the NIfTI/MetaImage headers hold no date).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cardigan.core.atomic import atomic_dir
from cardigan.core.defaults import default
from cardigan.core.image_quality import QUALITY_GRADES, quality_probabilities
from cardigan.phantom.heart import Heart
from cardigan.phantom.imaging import Imager, rng_for

log = logging.getLogger("cardigan")

VIEWS = ("2CH", "4CH")
LAYOUTS = ("nifti2023", "mhd2019")
#: Split files of the 2023 release, in patient order, with the public 400/50/50 proportions.
SPLIT_FILES = ("subgroup_training.txt", "subgroup_validation.txt", "subgroup_testing.txt")
MIN_PATIENTS = 3

_ROW_MM = 0.154  # nominal CAMUS axial pixel size; the lateral one is twice that


@dataclass(frozen=True)
class ViewSpec:
    """Everything needed to render one view of one patient."""

    patient: int  # 0-based index
    view: str
    depth_mm: float
    half_angle: float  # rad; half the sector's opening
    row_mm: float
    col_mm: float
    height: int
    width: int
    ed: Heart
    es: Heart
    nb_frames: int
    quality: str


@dataclass(frozen=True)
class PatientSpec:
    index: int
    name: str
    sex: str
    age: int
    quality: str
    frame_rate: float
    views: dict


def patient_name(index: int) -> str:
    """``patient0001`` for index 0."""
    return f"patient{index + 1:04d}"


def split_counts(n: int, valid: int | None = None, test: int | None = None
                 ) -> tuple[int, int, int]:
    """Training/validation/testing sizes in patient order: ``valid`` and ``test`` patients where
    given, else 10 % each (as CAMUS's 400/50/50); at least one patient in each split."""
    if n < MIN_PATIENTS:
        raise ValueError(f"phantom.patients must be at least {MIN_PATIENTS} (one per split), got {n}")
    n_val = max(1, int(n * 0.1 + 0.5)) if valid is None else valid
    n_test = max(1, int(n * 0.1 + 0.5)) if test is None else test
    for key, value in (("valid_patients", n_val), ("test_patients", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"phantom.{key} must be a positive integer, got {value!r}")
    if n - n_val - n_test < 1:
        raise ValueError(f"phantom.patients {n} leaves no training patient after "
                         f"{n_val} validation and {n_test} test patients")
    return n - n_val - n_test, n_val, n_test


# --------------------------------------------------------------------------------------------
# Patients
# --------------------------------------------------------------------------------------------


def draw_patient(seed: int, index: int, quality_shares: Mapping[str, float] | None = None
                 ) -> PatientSpec:
    """The patient's anatomy, acquisition geometry and metadata (deterministic in seed, index and
    the quality shares; the shares change only the grade, not the other draws)."""
    rng = rng_for(seed, index, 0)
    sex = "M" if rng.random() < 0.6 else "F"
    age = int(rng.integers(20, 91))
    quality = str(rng.choice(QUALITY_GRADES, p=quality_probabilities(quality_shares)))
    size = 1.0 + (0.06 if sex == "M" else -0.04) + rng.normal(0, 0.06)
    dilated = rng.random() < 0.12
    if dilated:
        size *= rng.uniform(1.12, 1.28)
    ef_target = rng.uniform(0.2, 0.45) if dilated else rng.uniform(0.35, 0.72)
    length = rng.uniform(70, 92) * size
    width = rng.uniform(36, 52) * size
    wall = rng.uniform(6, 13)
    wall_sept = rng.uniform(0.85, 1.1) if rng.random() < 0.7 else rng.uniform(1.15, 1.5)
    la_length = rng.uniform(36, 54) * size
    la_width = rng.uniform(32, 46) * size
    # Systole: the apex barely moves, the base descends towards it (long-axis shortening), the
    # cavity narrows and the wall thickens; the atrium fills.
    s_len = rng.uniform(0.86, 0.95)
    s_wid = math.sqrt((1 - ef_target) / s_len)  # V ~ L W^2 (area-length)
    thicken = rng.uniform(1.1, 1.4) if not dilated else rng.uniform(1.02, 1.15)
    la_fill = rng.uniform(1.06, 1.2)
    nb_frames = int(rng.integers(5, 8))
    frame_rate = round(nb_frames / rng.uniform(0.28, 0.38), 1)
    row_mm = _ROW_MM * rng.uniform(0.97, 1.03)

    views = {}
    for v, view in enumerate(VIEWS):
        vr = rng_for(seed, index, 1, v)
        four = view == "4CH"
        half_angle = math.radians(vr.uniform(30, 42.5))
        # Foreshortening: the probe misses the true apex, the LV looks shorter and blunter.
        short = vr.random() < 0.3
        ed = Heart(
            apex_x=vr.uniform(-6, 12) if four else vr.uniform(-9, 9),
            apex_y=vr.uniform(8, 34) + (vr.uniform(4, 12) if short else 0.0),
            tilt=math.radians(vr.uniform(-10, 18) if four else vr.uniform(-12, 12)),
            length=length * vr.uniform(0.95, 1.05) * (vr.uniform(0.8, 0.9) if short else 1.0),
            width=width * vr.uniform(0.93, 1.07),
            wall=wall * vr.uniform(0.92, 1.08),
            wall_sept=wall_sept if four else vr.uniform(0.85, 1.15),
            asym=vr.uniform(-0.1, 0.1),
            widest=vr.uniform(0.45, 0.62),
            blunt=vr.uniform(2.6, 3.6) if short else vr.uniform(1.8, 2.4),
            la_length=la_length * vr.uniform(0.95, 1.05),
            la_width=la_width * vr.uniform(0.95, 1.05),
            la_tilt=math.radians(vr.uniform(-12, 12)),
            peri_gap=vr.uniform(0.5, 5),
            peri_thick=vr.uniform(1.2, 3.5),
            pap_u=vr.uniform(0.45, 0.7),
            pap_size=vr.uniform(2.5, 5) if vr.random() < 0.75 else 0.0,
            valve_bow=vr.uniform(1, 5),
            rv_width=vr.uniform(16, 38) * size if four else 0.0,
            rv_start=vr.uniform(0.12, 0.4),
            rv_wall=vr.uniform(2.5, 5),
            band_u=vr.uniform(0.25, 0.55) if four and vr.random() < 0.6 else 0.0,
            ra_width=vr.uniform(26, 42) * size if four else 0.0,
            ao_radius=vr.uniform(8, 12) if vr.random() < 0.5 else 0.0,
            ao_u=length + la_length * vr.uniform(0.85, 1.15),
            ao_v=vr.uniform(0.5, 0.8) * la_width + 14,
        )
        es = replace(
            ed,
            apex_y=ed.apex_y + vr.uniform(0, 2),
            length=ed.length * s_len,
            width=ed.width * s_wid,
            wall=ed.wall * thicken,
            la_length=ed.la_length * la_fill,
            la_width=ed.la_width * la_fill,
            pap_size=ed.pap_size * 1.2,
            rv_width=ed.rv_width * vr.uniform(0.7, 0.9),
            ra_width=ed.ra_width * 1.1,
            ao_u=ed.ao_u - ed.length * (1 - s_len),
        )
        # Deep enough to show most of the atrium, within about 12-17 cm.
        bottom = ed.apex_y + ed.length + 0.85 * es.la_length
        depth = float(np.clip(bottom + vr.uniform(-6, 22), 120, 170))
        col_mm = 2 * row_mm * vr.uniform(0.99, 1.01)
        height = int(round(depth / row_mm))
        width_px = int(round(2 * depth * math.sin(half_angle) / col_mm))
        views[view] = ViewSpec(
            patient=index, view=view, depth_mm=depth, half_angle=half_angle, row_mm=row_mm,
            col_mm=col_mm, height=height, width=width_px, ed=ed, es=es, nb_frames=nb_frames,
            quality=quality,
        )
    return PatientSpec(index=index, name=patient_name(index), sex=sex, age=age, quality=quality,
                       frame_rate=frame_rate, views=views)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write(arr: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    """SimpleITK write; (H, W) -> 2-D image, (T, H, W) -> 3-D image; x spacing is the column's."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing if arr.ndim == 2 else (*spacing, 1.0))
    sitk.WriteImage(img, str(path), useCompression=path.suffix == ".gz")


def _write_cfg(path: Path, items: Sequence[tuple[str, object]]) -> None:
    path.write_text("".join(f"{k}: {v}\n" for k, v in items))


def render_patient(seed: int, index: int, sequences: bool = True,
                   quality_shares: Mapping[str, float] | None = None) -> dict:
    """All frames of both views of one patient: images, masks and the Info metadata."""
    p = draw_patient(seed, index, quality_shares)
    result = {"spec": p, "views": {}}
    volumes = {}
    for view in VIEWS:
        spec = p.views[view]
        imager = Imager(spec, seed, VIEWS.index(view))
        n = spec.nb_frames
        ks = range(n) if sequences else (0, n - 1)
        frames = {k: imager.frame(k) for k in ks}
        result["views"][view] = frames
        areas = {k: float((frames[k][1] == 1).sum()) * spec.row_mm * spec.col_mm for k in (0, n - 1)}
        volumes[view] = (areas, spec.ed.length, spec.es.length)
    # Biplane area-length (the patient-level EF, as in CAMUS's Info files).
    ed_l = min(volumes[v][1] for v in VIEWS)
    es_l = min(volumes[v][2] for v in VIEWS)
    a2, a4 = volumes["2CH"][0], volumes["4CH"][0]
    n2, n4 = p.views["2CH"].nb_frames, p.views["4CH"].nb_frames
    edv = 8 * a2[0] * a4[0] / (3 * math.pi * ed_l) / 1000
    esv = 8 * a2[n2 - 1] * a4[n4 - 1] / (3 * math.pi * es_l) / 1000
    result["edv"], result["esv"] = edv, esv
    result["ef"] = 100 * (edv - esv) / edv
    return result


def _write_patient(res: dict, pdir: Path, name: str, layout: str, sequences: bool) -> None:
    """One rendered patient's files in ``pdir``, in the 2023 NIfTI or the 2019 MetaImage form."""
    p: PatientSpec = res["spec"]
    mhd = layout == "mhd2019"
    ext = ".mhd" if mhd else ".nii.gz"
    pdir.mkdir(parents=True)
    for view in VIEWS:
        spec = p.views[view]
        frames = res["views"][view]
        n = spec.nb_frames
        sp = (spec.col_mm, spec.row_mm)
        stem = pdir / f"{name}_{view}"
        for inst, k in (("ED", 0), ("ES", n - 1)):
            image, mask = frames[k][0], frames[k][1]
            if mhd:  # the 2019 release stores single frames as 3-D images with one slice (W H 1)
                image, mask = image[None], mask[None]
            _write(image, sp, Path(f"{stem}_{inst}{ext}"))
            _write(mask, sp, Path(f"{stem}_{inst}_gt{ext}"))
        if sequences:
            images = np.stack([frames[k][0] for k in range(n)])
            if mhd:
                _write(images, sp, Path(f"{stem}_sequence.mhd"))
            else:
                _write(images, sp, Path(f"{stem}_half_sequence.nii.gz"))
                masks = np.stack([frames[k][1] for k in range(n)])
                _write(masks, sp, Path(f"{stem}_half_sequence_gt.nii.gz"))
        keys = [("ED", 1), ("ES", n), ("NbFrame", n), ("Sex", p.sex), ("Age", p.age),
                ("ImageQuality", p.quality)]
        if mhd:
            keys += [("LVedv", f"{res['edv']:.2f}"), ("LVesv", f"{res['esv']:.2f}"),
                     ("LVef", f"{res['ef']:.2f}")]
        else:
            keys += [("EF", int(round(res["ef"]))), ("FrameRate", p.frame_rate)]
        _write_cfg(pdir / f"Info_{view}.cfg", keys)


def _write_patient_nifti(root: Path, seed: int, index: int, sequences: bool,
                         quality_shares: Mapping[str, float]) -> dict:
    res = render_patient(seed, index, sequences, quality_shares)
    name = res["spec"].name
    _write_patient(res, root / "database_nifti" / name, name, "nifti2023", sequences)
    return {"name": name, "ef": res["ef"], "quality": res["spec"].quality}


def _write_patient_mhd(root: Path, seed: int, index: int, sequences: bool,
                       quality_shares: Mapping[str, float], folder: str, name: str) -> dict:
    res = render_patient(seed, index, sequences, quality_shares)
    _write_patient(res, root / folder / name, name, "mhd2019", sequences)
    return {"name": f"{folder}/{name}", "ef": res["ef"], "quality": res["spec"].quality}


def _job(args: tuple) -> dict:
    layout, root, seed, index, sequences, shares, extra = args
    if layout == "nifti2023":
        return _write_patient_nifti(Path(root), seed, index, sequences, shares)
    return _write_patient_mhd(Path(root), seed, index, sequences, shares, *extra)


def write_phantom(
    out_dir: str | os.PathLike,
    patients: int = default("phantom", "patients"),
    seed: int = default("phantom", "seed"),
    threads: int = 1,
    sequences: bool = True,
    layout: str = "nifti2023",
    overwrite: bool = False,
    valid_patients: int | None = default("phantom", "valid_patients"),
    test_patients: int | None = default("phantom", "test_patients"),
    quality_shares: Mapping[str, float] | None = None,
) -> Path:
    """Write ``patients`` phantom patients to ``out_dir`` in a CAMUS release layout; return it.

    ``layout="nifti2023"`` (default): ``database_nifti/patientXXXX/`` with ED/ES images and masks,
    half sequences (unless ``sequences=False``) and ``Info_{2CH,4CH}.cfg``, plus
    ``database_split/subgroup_{training,validation,testing}.txt`` (in patient order:
    ``valid_patients`` and ``test_patients``, by default 10 % each, and the rest for training).
    ``layout="mhd2019"``: ``training/`` holds the training and validation patients and
    ``testing/`` the test ones, numbered from patient0001 again, as in the 2019 release.
    ``quality_shares`` maps Good/Medium/Poor to the share of patients in that ImageQuality grade
    (None: the schema default of ``phantom.quality_shares``).

    The work runs on ``threads`` processes; everything is written into a temporary folder beside
    ``out_dir`` that is renamed at the end, so a failed run leaves nothing behind.
    """
    out = Path(out_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"phantom layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not isinstance(patients, int) or isinstance(patients, bool):
        raise ValueError(f"phantom.patients must be an integer, got {patients!r}")
    n_train, n_val, n_test = split_counts(patients, valid_patients, test_patients)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"phantom.seed must be a non-negative integer, got {seed!r}")
    shares = dict(zip(QUALITY_GRADES, quality_probabilities(quality_shares)))
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"phantom output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"phantom output folder {out} already exists and is not empty "
                              "(remove it or pass overwrite)")

    with atomic_dir(out) as tmp:
        names = [patient_name(i) for i in range(patients)]
        if layout == "nifti2023":
            jobs = [(layout, str(tmp), seed, i, sequences, shares, ()) for i in range(patients)]
            split_dir = tmp / "database_split"
            split_dir.mkdir()
            bounds = np.cumsum([0, n_train, n_val, n_test])
            for fname, a, b in zip(SPLIT_FILES, bounds[:-1], bounds[1:]):
                (split_dir / fname).write_text("".join(f"{n}\n" for n in names[a:b]))
        else:
            n_tv = n_train + n_val
            jobs = [(layout, str(tmp), seed, i, sequences, shares,
                     ("training", names[i]) if i < n_tv else ("testing", patient_name(i - n_tv)))
                    for i in range(patients)]
        results = _run(jobs, threads)
        efs = np.array([r["ef"] for r in results])
        grades = [r["quality"] for r in results]
        log.info("phantom: %d patients (%s) in %s, EF %.0f-%.0f %%, ImageQuality %s", patients,
                 layout, out, efs.min(), efs.max(),
                 " / ".join(f"{g} {grades.count(g)}" for g in QUALITY_GRADES))
    return out


def _run(jobs: list[tuple], threads: int) -> list[dict]:
    if threads == 1 or len(jobs) == 1:
        return [_job(j) for j in jobs]
    # fork where there is one: "spawn" re-runs the caller's main module in every worker, and the
    # caller may be a Snakemake script with no `if __name__ == "__main__"` guard. The parent has
    # not used ITK before forking (ITK's thread pool also re-initialises itself after a fork).
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=min(threads, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(_job, jobs, chunksize=1))
