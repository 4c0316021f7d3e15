"""The phantom's analytic heart: apical 2CH/4CH anatomy at one instant, as tissue classes at points.

Coordinates are millimetres in the image plane: x to the right, y = depth from the probe. The LV
is described in its own frame (u along the long axis from the endocardial apex to the mitral
plane, v across it, negative on the septal side), every other structure is placed relative to it.
Only classes 0-3 are CAMUS labels; the others (right heart, atrial walls, pericardium, papillary
muscles, valve leaflets, moderator band, descending aorta) shape the image but are never labelled:
papillary muscles lie inside the cavity label, as in CAMUS's contouring convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Tissue classes; the first four are the CAMUS labels.
BG, LV, MYO, LA, RBLOOD, WALL, PERI, PAP, VALVE, BAND = range(10)
N_CLASSES = 10
BLOOD = (LV, LA, RBLOOD)


@dataclass(frozen=True)
class Heart:
    """Anatomy at one instant, in mm (angles in rad); frames between ED and ES interpolate it."""

    apex_x: float  # endocardial apex
    apex_y: float
    tilt: float  # angle of the long axis from the beam direction (positive: base to the right)
    length: float  # apex to mitral plane (endocardium)
    width: float  # largest cavity width
    wall: float  # lateral myocardial thickness
    wall_sept: float  # septal thickness as a multiple of ``wall`` (basal bulge, hypertrophy)
    asym: float  # lateral/septal cavity width asymmetry (fraction)
    widest: float  # where the cavity is widest, as a fraction of the length
    blunt: float  # superellipse exponent of the apical cap: 2 = elliptic, larger = foreshortened
    la_length: float
    la_width: float
    la_tilt: float  # extra tilt of the atrium's axis (|la_tilt| < 15 degrees)
    peri_gap: float  # fluid/fat gap between myocardium and pericardium
    peri_thick: float
    pap_u: float  # papillary muscle centre along the axis (fraction of the length)
    pap_size: float  # its half-thickness in mm; 0: not in the plane
    valve_bow: float  # closed mitral leaflets bulge this far into the atrium
    rv_width: float  # 0 in 2CH: no right heart in the plane
    rv_start: float  # the RV apex lies this fraction of the LV length below the LV apex
    rv_wall: float
    band_u: float  # moderator band along the RV (fraction of the RV); 0: not visible
    ra_width: float
    ao_radius: float  # descending aorta behind the atrium; 0: not in the plane
    ao_u: float  # its centre, in the LV frame (mm)
    ao_v: float


def heart_at(ed: Heart, es: Heart, phase: float) -> Heart:
    """Anatomy at ``phase`` in [0, 1] (0 = ED, 1 = ES), eased like the ejection's volume curve."""
    s = 0.5 - 0.5 * math.cos(math.pi * phase)
    return Heart(**{f: getattr(ed, f) + s * (getattr(es, f) - getattr(ed, f))
                    for f in Heart.__dataclass_fields__})


def profile(t: np.ndarray, c: float = 0.55, p: float = 2.0) -> np.ndarray:
    """Half-width along a chamber's axis as a fraction of the largest: a bullet shape.

    A superellipse (exponent ``p``; 2 = ellipse) from the apex (t = 0) to its widest point
    (t = c), then a gentle narrowing to the annulus (t = 1); zero outside [0, 1].
    """
    c32 = np.float32(c)
    t = np.clip(t, -1, 2)
    a = np.clip((c32 - t) / c32, 0, 1)
    if p == 2.0:
        top = np.sqrt(1 - a * a)
    else:
        top = np.clip(1 - a ** np.float32(p), 0, None) ** np.float32(1 / p)
    top = top * (t >= 0)
    b = (t - c32) / (1 - c32)
    base = np.clip(1 - 0.22 * b * b, 0, None) * (t <= 1)
    return np.where(t < c32, top, base)


def _superellipse(a: np.ndarray) -> np.ndarray:
    """|a| ** 2.5: the chambers' superellipse exponent (between an ellipse and a rounded box)."""
    return a * a * np.sqrt(np.abs(a))


def lv_axes(h: Heart, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v): along the long axis from the apex towards the base, and across it."""
    f32 = np.float32
    ax, ay = f32(math.sin(h.tilt)), f32(math.cos(h.tilt))
    dx, dy = x - f32(h.apex_x), y - f32(h.apex_y)
    return dx * ax + dy * ay, dx * ay - dy * ax


def outer_halfwidth(h: Heart) -> float:
    """An upper bound of the epicardium's half-width (for bounding boxes)."""
    return 0.5 * h.width * (1 + abs(h.asym)) + h.wall * max(1.0, h.wall_sept) + 1


def tissue_map(h: Heart, x: np.ndarray, y: np.ndarray, labels_only: bool = False) -> np.ndarray:
    """Tissue class (``BG`` .. ``BAND``) at points (x, y) mm; classes 0-3 are the CAMUS labels.

    With ``labels_only`` the unlabelled structures are skipped and the result holds CAMUS labels
    only (the papillary muscles and leaflets are then part of the cavity/atrium, as in CAMUS).
    """
    x, y = np.broadcast_arrays(x, y)
    f32 = np.float32
    u, v = lv_axes(h, x, y)
    av = np.abs(v)
    apex_wall = f32(0.8 * h.wall)
    wall = np.where(v < 0, f32(h.wall * h.wall_sept), f32(h.wall))
    t_out = (u + apex_wall) / f32(h.length + apex_wall)
    outer = f32(0.5 * h.width) * profile(t_out, h.widest, h.blunt) + wall * np.sqrt(
        np.clip((u + apex_wall) / apex_wall, 0, 1))
    above_mitral = u <= h.length
    below = ~above_mitral
    out = np.zeros(x.shape, np.uint8)

    # Paint from the outermost structure inwards so that inner ones win.
    if not labels_only:
        gap, thick = f32(h.peri_gap), f32(h.peri_thick)
        ring = (u >= -apex_wall - gap - thick) & (av <= outer + gap + thick) & (u <= h.length + 4)
        out[ring] = PERI
        out[ring & (u >= -apex_wall - gap) & (av <= outer + gap)] = BG
    if not labels_only and h.ao_radius > 0:
        ao = (u - f32(h.ao_u)) ** 2 + (v - f32(h.ao_v)) ** 2
        out[ao <= f32((h.ao_radius + 2.5) ** 2)] = WALL
        out[ao <= f32(h.ao_radius ** 2)] = RBLOOD
    if not labels_only and h.rv_width > 0:
        # Right ventricle hugging the septum, shorter than the LV; right atrium beside the LA.
        rv_len = (1 - h.rv_start) * h.length
        t_rv = (u - f32(h.rv_start * h.length)) / f32(rv_len)
        rv_half = f32(h.rv_width) * profile(np.clip(t_rv, 0, 1) * f32(0.9) + f32(0.1), 0.6, 2.0) * (
            (t_rv >= 0) & above_mitral)
        inner = -outer - 1.0
        rv_out = (v < inner) & (v > inner - rv_half - f32(h.rv_wall)) & (rv_half > 0)
        out[rv_out] = WALL
        rv = (v < inner) & (v > inner - rv_half)
        out[rv] = RBLOOD
        if h.band_u > 0:
            # The moderator band crosses the RV from the septum to its free wall.
            out[rv & (np.abs(t_rv - f32(h.band_u)) < f32(2.5 / rv_len))] = BAND
        ra_c = -(0.5 * h.la_width + 4 + 0.5 * h.ra_width)
        ra_r = _superellipse((u - f32(h.length + 0.45 * h.la_length)) / f32(0.5 * h.la_length)) + \
            _superellipse((v - f32(ra_c)) / f32(0.5 * h.ra_width))
        out[(ra_r <= 1.4) & below] = WALL
        out[(ra_r <= 1.0) & below] = RBLOOD
        # Tricuspid leaflets across the RV's base.
        tv = (np.abs(u - f32(h.length - 1.0)) < 0.9) & (v < inner) & (v > inner - f32(0.8 * h.rv_width))
        out[tv] = VALVE

    # Left atrium below the mitral plane: a rounded box, tilted a little off the LV axis.
    c, s = f32(math.cos(h.la_tilt)), f32(math.sin(h.la_tilt))
    lu = u - f32(h.length)
    au = lu * c + v * s - f32(0.425 * h.la_length)
    aw = v * c - lu * s
    la_r = _superellipse(au / f32(0.5 * h.la_length)) + _superellipse(aw / f32(0.5 * h.la_width))
    if not labels_only:
        out[(la_r <= 1.4) & below] = WALL
    out[(la_r <= 1.0) & below] = LA

    out[above_mitral & (u >= -apex_wall) & (av <= outer)] = MYO
    half = f32(0.5 * h.width) * profile(u / f32(h.length), h.widest, h.blunt) * np.where(
        v < 0, f32(1 + h.asym), f32(1 - h.asym))
    cavity = (u >= 0) & above_mitral & (av <= half)
    out[cavity] = LV
    if not labels_only:
        if h.pap_size > 0:
            # A papillary muscle rising from the lateral wall into the cavity (inside label 1).
            pu = f32(h.pap_u * h.length)
            pv = f32(0.5 * h.width * (1 - h.asym) * 0.85 - 0.7 * h.pap_size)
            pr = ((u - pu) / f32(2.2 * h.pap_size)) ** 2 + ((v - pv) / f32(h.pap_size)) ** 2
            out[cavity & (pr <= 1)] = PAP
        # Closed mitral leaflets, bowing into the atrium.
        hb = f32(0.5 * h.width * profile(np.float32(1.0), h.widest, h.blunt))
        bow = f32(h.valve_bow) * np.clip(1 - (v / hb) ** 2, 0, 1)
        out[(np.abs(u - f32(h.length) - bow) < 0.7) & (av < hb)] = VALVE
    return out
