"""A deterministic CAMUS-like phantom: apical 2CH/4CH echocardiograms written as the CAMUS release.

Each patient gets its own anatomy (LV length, width, wall thickness, tilt, LA size, imaging depth,
pixel spacing, image quality) and a contraction from end-diastole (ED) to end-systole (ES). Every
frame is imaged with a cheap ultrasound model on a polar (depth x angle) grid:

1. a tissue map (LV cavity, LV myocardium, LA, right heart, pericardium, other tissue) is
   evaluated at the polar sample points and turned into an echogenicity (scatterer amplitude) map;
2. complex Gaussian scatterers carry that amplitude (fully developed speckle);
3. a Gaussian point-spread function blurs them, short axially and a constant *angle* laterally, so
   that after scan conversion the lateral resolution degrades with depth as with a real probe;
4. the envelope (magnitude) is log-compressed to a 40-60 dB dynamic range mapped to 0-255;
5. the polar image is scan-converted (bilinear) into the Cartesian sector, zero outside it.

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
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .atomic import atomic_dir
from .defaults import default

log = logging.getLogger("cardigan")

VIEWS = ("2CH", "4CH")
LAYOUTS = ("nifti2023", "mhd2019")
#: Split files of the 2023 release, in patient order, with the public 400/50/50 proportions.
SPLIT_FILES = ("subgroup_training.txt", "subgroup_validation.txt", "subgroup_testing.txt")
MIN_PATIENTS = 3

# Tissue classes of the simulation; the first four are the CAMUS labels.
_BG, _LV, _MYO, _LA, _RBLOOD, _WALL, _PERI = range(7)

_HALF_ANGLE = math.radians(37.5)  # the sector spans about 75 degrees
_ROW_MM = 0.154  # nominal CAMUS axial pixel size; the lateral one is twice that
_POLAR_DR_MM = 0.3  # polar grid: axial step
_POLAR_ANGLES = 200  # polar grid: number of beams over the sector


@dataclass(frozen=True)
class Heart:
    """Anatomy at one instant, in mm, in image coordinates (x to the right, y = depth)."""

    apex_x: float  # endocardial apex
    apex_y: float
    tilt: float  # rad; angle of the long axis from the beam direction (positive: base to the right)
    length: float  # apex to mitral plane (endocardium)
    width: float  # largest cavity width
    wall: float  # myocardial thickness
    asym: float  # lateral/septal width asymmetry (fraction)
    la_length: float
    la_width: float
    la_tilt: float  # rad, extra tilt of the atrium's axis
    rv_width: float  # 0 in 2CH: no right heart in the plane
    ra_width: float


@dataclass(frozen=True)
class ViewSpec:
    """Everything needed to render one view of one patient."""

    patient: int  # 0-based index
    view: str
    depth_mm: float
    row_mm: float
    col_mm: float
    height: int
    width: int
    ed: Heart
    es: Heart
    nb_frames: int
    dynamic_range_db: float
    psf_axial_mm: float
    psf_lateral_deg: float
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


def split_counts(n: int) -> tuple[int, int, int]:
    """Training/validation/testing sizes: 80/10/10 % by patient order, at least one each."""
    if n < MIN_PATIENTS:
        raise ValueError(f"phantom.patients must be at least {MIN_PATIENTS} (one per split), got {n}")
    n_val = max(1, int(n * 0.1 + 0.5))
    n_test = max(1, int(n * 0.1 + 0.5))
    return n - n_val - n_test, n_val, n_test


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


def draw_patient(seed: int, index: int) -> PatientSpec:
    """The patient's anatomy, acquisition settings and metadata (deterministic in seed, index)."""
    rng = _rng(seed, index, 0)
    sex = "M" if rng.random() < 0.6 else "F"
    age = int(rng.integers(20, 91))
    quality = str(rng.choice(["Good", "Medium", "Poor"], p=[0.35, 0.45, 0.2]))
    size = 1.0 + (0.06 if sex == "M" else -0.04) + rng.normal(0, 0.05)
    ef_target = rng.uniform(0.35, 0.70)
    length = rng.uniform(74, 90) * size
    width = rng.uniform(40, 50) * size
    wall = rng.uniform(8, 12)
    la_length = rng.uniform(38, 50) * size
    la_width = rng.uniform(34, 44) * size
    # Systole: the apex barely moves, the base descends towards it (long-axis shortening), the
    # cavity narrows and the wall thickens; the atrium fills.
    s_len = rng.uniform(0.86, 0.94)
    s_wid = math.sqrt((1 - ef_target) / s_len)  # V ~ L W^2 (area-length)
    thicken = rng.uniform(1.15, 1.35)
    la_fill = rng.uniform(1.08, 1.2)
    nb_frames = int(rng.integers(5, 8))
    frame_rate = round(nb_frames / rng.uniform(0.28, 0.38), 1)
    row_mm = _ROW_MM * rng.uniform(0.97, 1.03)
    dyn = {"Good": (50, 60), "Medium": (45, 55), "Poor": (40, 50)}[quality]

    views = {}
    for v, view in enumerate(VIEWS):
        vr = _rng(seed, index, 1, v)
        four = view == "4CH"
        ed = Heart(
            apex_x=vr.uniform(0, 8) if four else vr.uniform(-5, 5),
            apex_y=vr.uniform(16, 28),
            tilt=math.radians(vr.uniform(0, 10) if four else vr.uniform(-8, 8)),
            length=length * vr.uniform(0.96, 1.04),
            width=width * vr.uniform(0.94, 1.06),
            wall=wall * vr.uniform(0.95, 1.05),
            asym=vr.uniform(-0.08, 0.08),
            la_length=la_length * vr.uniform(0.95, 1.05),
            la_width=la_width * vr.uniform(0.95, 1.05),
            la_tilt=math.radians(vr.uniform(-10, 10)),
            rv_width=vr.uniform(22, 32) * size if four else 0.0,
            ra_width=vr.uniform(28, 38) * size if four else 0.0,
        )
        es = replace(
            ed,
            apex_y=ed.apex_y + vr.uniform(0, 2),
            length=ed.length * s_len,
            width=ed.width * s_wid,
            wall=ed.wall * thicken,
            la_length=ed.la_length * la_fill,
            la_width=ed.la_width * la_fill,
            rv_width=ed.rv_width * 0.8,
            ra_width=ed.ra_width * 1.1,
        )
        # Deep enough to show most of the atrium, within CAMUS's 13-16 cm.
        bottom = ed.apex_y + ed.length + 0.85 * es.la_length
        depth = float(np.clip(bottom + vr.uniform(-2, 14), 130, 160))
        col_mm = 2 * row_mm * vr.uniform(0.99, 1.01)
        height = int(round(depth / row_mm))
        width_px = int(round(2 * depth * math.sin(_HALF_ANGLE) / col_mm))
        views[view] = ViewSpec(
            patient=index, view=view, depth_mm=depth, row_mm=row_mm, col_mm=col_mm,
            height=height, width=width_px, ed=ed, es=es, nb_frames=nb_frames,
            dynamic_range_db=vr.uniform(*dyn), psf_axial_mm=vr.uniform(0.3, 0.45),
            psf_lateral_deg=vr.uniform(0.6, 0.9), quality=quality,
        )
    return PatientSpec(index=index, name=patient_name(index), sex=sex, age=age, quality=quality,
                       frame_rate=frame_rate, views=views)


def heart_at(spec: ViewSpec, phase: float) -> Heart:
    """Anatomy at ``phase`` in [0, 1] (0 = ED, 1 = ES), eased like the ejection's volume curve."""
    s = 0.5 - 0.5 * math.cos(math.pi * phase)
    ed, es = spec.ed, spec.es
    return Heart(**{f: getattr(ed, f) + s * (getattr(es, f) - getattr(ed, f))
                    for f in Heart.__dataclass_fields__})


def _profile(t: np.ndarray) -> np.ndarray:
    """Half-width of the LV cavity along its axis, as a fraction of the largest: a bullet shape.

    An ellipse from the apex (t = 0) to its widest point (t = c), then a gentle narrowing to the
    mitral annulus (t = 1); zero outside [0, 1].
    """
    c = np.float32(0.55)
    t = np.clip(t, -1, 2)
    a = (c - t) / c
    top = np.sqrt(np.clip(1 - a * a, 0, None))
    b = (t - c) / (1 - c)
    base = np.clip(1 - 0.22 * b * b, 0, None) * (t <= 1)
    return np.where(t < c, top, base)


def _cube(a: np.ndarray) -> np.ndarray:
    return np.abs(a * a * a)


def tissue_map(h: Heart, x: np.ndarray, y: np.ndarray, labels_only: bool = False) -> np.ndarray:
    """Tissue class (``_BG`` .. ``_PERI``) at points (x, y) mm; classes 0-3 are the CAMUS labels.

    With ``labels_only`` the unlabelled structures (right heart, walls, pericardium) are skipped
    and the result holds CAMUS labels only.
    """
    x, y = np.broadcast_arrays(x, y)
    f32 = np.float32
    ax, ay = f32(math.sin(h.tilt)), f32(math.cos(h.tilt))
    dx, dy = x - f32(h.apex_x), y - f32(h.apex_y)
    u = dx * ax + dy * ay  # along the long axis, from the apex towards the base
    v = dx * ay - dy * ax  # across it; negative: septal side (image left in 4CH)
    av = np.abs(v)
    apex_wall = f32(0.8 * h.wall)
    outer = f32(0.5 * h.width) * _profile((u + apex_wall) / f32(h.length + apex_wall)) + f32(
        h.wall) * np.sqrt(np.clip((u + apex_wall) / apex_wall, 0, 1))
    above_mitral = u <= h.length
    below = ~above_mitral
    out = np.zeros(x.shape, np.uint8)

    # Paint from the outermost structure inwards so that inner ones win.
    if not labels_only:
        out[above_mitral & (u >= -apex_wall - 2.5) & (av <= outer + 2.5)] = _PERI
    if not labels_only and h.rv_width > 0:
        # Right ventricle hugging the septum, shorter than the LV; right atrium beside the LA.
        t_rv = (u - f32(0.22 * h.length)) / f32(0.78 * h.length)
        rv_half = f32(h.rv_width) * _profile(np.clip(t_rv, 0, 1) * f32(0.9) + f32(0.1)) * (
            (t_rv >= 0) & above_mitral)
        inner = -outer - 2.0
        out[(v < inner) & (v > inner - rv_half - 4) & (rv_half > 0)] = _WALL
        out[(v < inner) & (v > inner - rv_half)] = _RBLOOD
        ra_c = -(0.5 * h.la_width + 4 + 0.5 * h.ra_width)
        ra_r = _cube((u - f32(h.length + 0.45 * h.la_length)) / f32(0.5 * h.la_length)) + _cube(
            (v - f32(ra_c)) / f32(0.5 * h.ra_width))
        out[(ra_r <= 1.4) & below] = _WALL
        out[(ra_r <= 1.0) & below] = _RBLOOD

    # Left atrium below the mitral plane: a rounded box, tilted a little off the LV axis.
    c, s = f32(math.cos(h.la_tilt)), f32(math.sin(h.la_tilt))
    lu = u - f32(h.length)
    au = lu * c + v * s - f32(0.425 * h.la_length)
    aw = v * c - lu * s
    la_r = _cube(au / f32(0.5 * h.la_length)) + _cube(aw / f32(0.5 * h.la_width))
    if not labels_only:
        out[(la_r <= 1.4) & below] = _WALL
    out[(la_r <= 1.0) & below] = _LA

    out[above_mitral & (u >= -apex_wall) & (av <= outer)] = _MYO
    half = f32(0.5 * h.width) * _profile(u / f32(h.length)) * np.where(
        v < 0, f32(1 + h.asym), f32(1 - h.asym))
    out[(u >= 0) & above_mitral & (av <= half)] = _LV
    return out


# --------------------------------------------------------------------------------------------
# Imaging
# --------------------------------------------------------------------------------------------


class _Scanner:
    """Polar grid and scan-conversion tables of one view (shared by all its frames)."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec
        self.n_r = int(math.ceil(spec.depth_mm / _POLAR_DR_MM))
        self.n_t = _POLAR_ANGLES
        self.dt = 2 * _HALF_ANGLE / self.n_t
        r = (np.arange(self.n_r, dtype=np.float32) + 0.5) * _POLAR_DR_MM
        th = (-_HALF_ANGLE + (np.arange(self.n_t, dtype=np.float32) + 0.5) * self.dt)
        self.r = r
        self.px = r[:, None] * np.sin(th)[None, :]
        self.py = r[:, None] * np.cos(th)[None, :]

        # Output pixel centres; the probe (sector apex) sits at the top centre.
        h, w = spec.height, spec.width
        ys = (np.arange(h, dtype=np.float32) + 0.5) * spec.row_mm
        xs = (np.arange(w, dtype=np.float32) - (w - 1) / 2) * spec.col_mm
        self.xs, self.ys = xs, ys
        rr = np.hypot(xs[None, :], ys[:, None])
        tt = np.arctan2(xs[None, :], ys[:, None])
        fan = (rr <= spec.depth_mm) & (np.abs(tt) <= _HALF_ANGLE)
        self.fan = fan
        self.fan_idx = np.flatnonzero(fan)
        fr = np.clip(rr.ravel()[self.fan_idx] / _POLAR_DR_MM - 0.5, 0, self.n_r - 1.001)
        ft = np.clip((tt.ravel()[self.fan_idx] + _HALF_ANGLE) / self.dt - 0.5, 0, self.n_t - 1.001)
        i0 = fr.astype(np.int64)
        j0 = ft.astype(np.int64)
        self.wr = (fr - i0).astype(np.float32)
        self.wt = (ft - j0).astype(np.float32)
        self.k00 = i0 * self.n_t + j0

    def scan_convert(self, polar: np.ndarray) -> np.ndarray:
        """Bilinear polar -> Cartesian; zero outside the sector."""
        p = polar.ravel()
        k, n_t = self.k00, self.n_t
        top = p[k] * (1 - self.wt) + p[k + 1] * self.wt
        bot = p[k + n_t] * (1 - self.wt) + p[k + n_t + 1] * self.wt
        out = np.zeros(self.spec.height * self.spec.width, np.uint8)
        out[self.fan_idx] = np.rint(top * (1 - self.wr) + bot * self.wr).astype(np.uint8)
        return out.reshape(self.spec.height, self.spec.width)

    def mask(self, heart: Heart) -> np.ndarray:
        """CAMUS labels at the output pixel centres, within the heart's bounding box and the fan."""
        spec = self.spec
        out = np.zeros((spec.height, spec.width), np.uint8)
        # The LV and the LA (|LA tilt| < 15 degrees) fit in this box of the LV's frame.
        reach_u = heart.length + 1.15 * heart.la_length + 0.3 * heart.la_width + 2
        reach_v = max(0.5 * heart.width * 1.1 + heart.wall, 0.6 * heart.la_width + 0.15 * heart.la_length) + 2
        ax, ay = math.sin(heart.tilt), math.cos(heart.tilt)
        cu = np.array([-heart.wall - 2, reach_u])
        cv = np.array([-reach_v, reach_v])
        cx = heart.apex_x + cu[:, None] * ax + cv[None, :] * ay
        cy = heart.apex_y + cu[:, None] * ay - cv[None, :] * ax
        r0, r1 = np.searchsorted(self.ys, [cy.min(), cy.max()])
        c0, c1 = np.searchsorted(self.xs, [cx.min(), cx.max()])
        if r1 <= r0 or c1 <= c0:
            return out
        out[r0:r1, c0:c1] = _rasterise(
            lambda x, y: tissue_map(heart, x, y, labels_only=True), self.xs[c0:c1], self.ys[r0:r1])
        out[~self.fan] = 0
        return out


def _rasterise(fn, xs: np.ndarray, ys: np.ndarray, step_r: int = 4, step_c: int = 2) -> np.ndarray:
    """``fn(x, y)`` at every pixel centre of the grid ``ys`` x ``xs``, exactly, but cheaply.

    ``fn`` is evaluated on a coarse grid first; only pixels whose coarse neighbourhood holds more
    than one value are evaluated again. Exact as long as no structure is thinner than the coarse
    step (here 0.6 mm; the thinnest, the myocardium, is 8 mm or more).
    """
    h, w = len(ys), len(xs)

    def samples(a: np.ndarray, step: int) -> np.ndarray:
        # One sample past the end, so that the last pixels lie between two samples.
        d = a[1] - a[0] if len(a) > 1 else np.float32(1)
        return a[0] + d * step * np.arange(-(-len(a) // step) + 1, dtype=np.float32)

    coarse = fn(samples(xs, step_c)[None, :], samples(ys, step_r)[:, None])
    unsure = ndimage.maximum_filter(coarse, 3) != ndimage.minimum_filter(coarse, 3)
    full = np.repeat(np.repeat(coarse, step_r, 0), step_c, 1)[:h, :w]
    rr, cc = np.nonzero(np.repeat(np.repeat(unsure, step_r, 0), step_c, 1)[:h, :w])
    full[rr, cc] = fn(xs[cc], ys[rr])
    return full


# Scatterer amplitude (linear) of each tissue class, before per-patient jitter.
_ECHO = np.array([0.15, 0.012, 0.75, 0.012, 0.014, 0.45, 1.4], np.float32)


class _Imager:
    """Renders the frames of one view; patient-level randomness fixed at construction."""

    def __init__(self, spec: ViewSpec, seed: int):
        self.spec = spec
        self.seed = seed
        self.sc = _Scanner(spec)
        rng = _rng(seed, spec.patient, 2, VIEWS.index(spec.view))
        sc = self.sc
        poor = {"Good": 0.0, "Medium": 0.5, "Poor": 1.0}[spec.quality]
        self.echo = _ECHO * rng.uniform(0.8, 1.25, _ECHO.size).astype(np.float32)
        self.echo[[_LV, _LA, _RBLOOD]] *= 1 + 1.5 * poor  # blood haze/clutter in poorer images
        self.echo[_MYO] *= 1 - 0.3 * poor
        # Heterogeneous tissue: a smooth log-normal texture fixed to the patient.
        tex = ndimage.gaussian_filter(rng.standard_normal((sc.n_r, sc.n_t)).astype(np.float32),
                                      (12, 5), mode="nearest")
        tex *= 0.35 / max(float(tex.std()), 1e-6)
        # Imperfect time-gain compensation, lateral drop-outs (ribs, off-axis walls) and
        # near-field reverberation haze.
        gain_r = np.exp(rng.uniform(-0.004, 0.002) * sc.r)
        lat = ndimage.gaussian_filter1d(rng.standard_normal(sc.n_t).astype(np.float32), 14,
                                        mode="nearest")
        lat = np.clip(1 + 0.9 * (lat / max(float(np.abs(lat).max()), 1e-6)) * (0.3 + 0.5 * poor), 0.25, 1.6)
        self.gain = (np.exp(tex) * gain_r[:, None] * lat[None, :]).astype(np.float32)
        self.haze = (rng.uniform(0.15, 0.4) * np.exp(-sc.r / rng.uniform(8, 16)))[:, None].astype(np.float32)
        self.noise = np.float32(0.004 * (1 + 2 * poor))
        self.ref = np.float32(self.echo[_MYO] * 2.2)
        self.base = rng.standard_normal((2, sc.n_r, sc.n_t), dtype=np.float32)
        self.sigma = (spec.psf_axial_mm / _POLAR_DR_MM,
                      math.radians(spec.psf_lateral_deg) / sc.dt)

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of frame ``k`` (0 = ED, ``nb_frames - 1`` = ES)."""
        spec, sc = self.spec, self.sc
        heart = heart_at(spec, k / (spec.nb_frames - 1))
        rng = _rng(self.seed, spec.patient, 3, VIEWS.index(spec.view), k)
        amp = self.echo[tissue_map(heart, sc.px, sc.py)] * self.gain + self.haze
        # Mostly the same scatterers from frame to frame (tissue), partly renewed (blood, motion).
        fresh = rng.standard_normal((2, sc.n_r, sc.n_t), dtype=np.float32)
        g = 0.95 * self.base + 0.31 * fresh
        re = ndimage.gaussian_filter(amp * g[0], self.sigma, mode="nearest", truncate=3.0)
        im = ndimage.gaussian_filter(amp * g[1], self.sigma, mode="nearest", truncate=3.0)
        env = np.hypot(re, im) + self.noise * np.abs(fresh[0])
        db = 20 * np.log10(env / self.ref + 1e-6)
        dr = spec.dynamic_range_db
        polar = np.clip((db + dr) * (255.0 / dr), 0, 255).astype(np.float32)
        return sc.scan_convert(polar), sc.mask(heart)


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


def render_patient(seed: int, index: int, sequences: bool = True) -> dict:
    """All frames of both views of one patient: images, masks and the Info metadata."""
    p = draw_patient(seed, index)
    result = {"spec": p, "views": {}}
    volumes = {}
    for view in VIEWS:
        spec = p.views[view]
        imager = _Imager(spec, seed)
        n = spec.nb_frames
        ks = range(n) if sequences else (0, n - 1)
        frames = {k: imager.frame(k) for k in ks}
        result["views"][view] = frames
        areas = {k: float((frames[k][1] == 1).sum()) * spec.row_mm * spec.col_mm for k in (0, n - 1)}
        volumes[view] = (areas, heart_at(spec, 0).length, heart_at(spec, 1).length)
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


def _write_patient_nifti(root: Path, seed: int, index: int, sequences: bool) -> dict:
    res = render_patient(seed, index, sequences)
    name = res["spec"].name
    _write_patient(res, root / "database_nifti" / name, name, "nifti2023", sequences)
    return {"name": name, "ef": res["ef"]}


def _write_patient_mhd(root: Path, seed: int, index: int, sequences: bool, folder: str, name: str) -> dict:
    res = render_patient(seed, index, sequences)
    _write_patient(res, root / folder / name, name, "mhd2019", sequences)
    return {"name": f"{folder}/{name}", "ef": res["ef"]}


def _job(args: tuple) -> dict:
    layout, root, seed, index, sequences, extra = args
    if layout == "nifti2023":
        return _write_patient_nifti(Path(root), seed, index, sequences)
    return _write_patient_mhd(Path(root), seed, index, sequences, *extra)


def write_phantom(
    out_dir: str | os.PathLike,
    patients: int = default("phantom", "patients"),
    seed: int = default("phantom", "seed"),
    threads: int = 1,
    sequences: bool = True,
    layout: str = "nifti2023",
    overwrite: bool = False,
) -> Path:
    """Write ``patients`` phantom patients to ``out_dir`` in a CAMUS release layout; return it.

    ``layout="nifti2023"`` (default): ``database_nifti/patientXXXX/`` with ED/ES images and masks,
    half sequences (unless ``sequences=False``) and ``Info_{2CH,4CH}.cfg``, plus
    ``database_split/subgroup_{training,validation,testing}.txt`` (80/10/10 % in patient order).
    ``layout="mhd2019"``: ``training/`` holds the training and validation patients and
    ``testing/`` the test ones, numbered from patient0001 again, as in the 2019 release.

    The work runs on ``threads`` processes; everything is written into a temporary folder beside
    ``out_dir`` that is renamed at the end, so a failed run leaves nothing behind.
    """
    out = Path(out_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"phantom layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not isinstance(patients, int) or isinstance(patients, bool):
        raise ValueError(f"phantom.patients must be an integer, got {patients!r}")
    n_train, n_val, n_test = split_counts(patients)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"phantom.seed must be a non-negative integer, got {seed!r}")
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
            jobs = [(layout, str(tmp), seed, i, sequences, ()) for i in range(patients)]
            split_dir = tmp / "database_split"
            split_dir.mkdir()
            bounds = np.cumsum([0, n_train, n_val, n_test])
            for fname, a, b in zip(SPLIT_FILES, bounds[:-1], bounds[1:]):
                (split_dir / fname).write_text("".join(f"{n}\n" for n in names[a:b]))
        else:
            n_tv = n_train + n_val
            jobs = [(layout, str(tmp), seed, i, sequences,
                     ("training", names[i]) if i < n_tv else ("testing", patient_name(i - n_tv)))
                    for i in range(patients)]
        results = _run(jobs, threads)
        efs = np.array([r["ef"] for r in results])
        log.info("phantom: %d patients (%s) in %s, EF %.0f-%.0f %%", patients, layout, out,
                 efs.min(), efs.max())
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
