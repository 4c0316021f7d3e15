"""Cheap ultrasound imaging of the phantom's heart: one acquisition's look, from physics and artefacts.

Every frame is imaged on a polar (depth x beam angle) grid, then scan-converted into the fan:

1. the tissue map of ``heart_model`` becomes a scatterer amplitude map: per-exam echogenicities
   (the blood/myocardium contrast falls with the image quality), a smooth log-normal tissue
   texture, cavity clutter, wall dropout (segments of the lateral wall and septum fade where the
   beam runs along them), a calcified annulus with its acoustic shadow, rib/lung shadows at the
   sector edge, near-field haze and reverberation arcs;
2. complex Gaussian scatterers carry that amplitude (fully developed speckle). The tissue's
   scatterers evolve as an AR(1) chain over the sequence, so neighbouring frames are partially
   correlated and ED and ES are nearly independent; blood's are renewed every frame;
3. a Gaussian point-spread function (short axially, a constant angle laterally, so it widens with
   depth) and incoherent side lobes (a wide lateral blur of the intensity);
4. attenuation with depth, electronic noise, an imperfect time-gain compensation (the far field can
   end darker or noisier), the overall gain;
5. log compression to a 40-60 dB dynamic range and a per-exam grey map (reject level, gamma);
6. bilinear scan conversion into the Cartesian sector, zero outside it.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
from scipy import ndimage

from cardigan.phantom.heart import (
    BAND,
    BG,
    BLOOD,
    LA,
    LV,
    MYO,
    N_CLASSES,
    PAP,
    PERI,
    RBLOOD,
    VALVE,
    WALL,
    Heart,
    heart_at,
    lv_axes,
    outer_halfwidth,
    tissue_map,
)

POLAR_DR_MM = 0.3  # polar grid: axial step
POLAR_DT = math.radians(75 / 200)  # polar grid: angular step between beams

_QUALITY = {"Good": (0.0, 0.3), "Medium": (0.35, 0.65), "Poor": (0.7, 1.0)}


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class Scanner:
    """Polar grid and scan-conversion tables of one view (shared by all its frames)."""

    def __init__(self, spec):
        self.spec = spec
        half = spec.half_angle
        self.n_r = int(math.ceil(spec.depth_mm / POLAR_DR_MM))
        self.n_t = int(math.ceil(2 * half / POLAR_DT))
        self.dt = 2 * half / self.n_t
        r = (np.arange(self.n_r, dtype=np.float32) + 0.5) * POLAR_DR_MM
        th = (-half + (np.arange(self.n_t, dtype=np.float32) + 0.5) * self.dt).astype(np.float32)
        self.r, self.th = r, th
        self.px = r[:, None] * np.sin(th)[None, :]
        self.py = r[:, None] * np.cos(th)[None, :]

        # Output pixel centres; the probe (sector apex) sits at the top centre.
        h, w = spec.height, spec.width
        self.ys = (np.arange(h, dtype=np.float32) + 0.5) * spec.row_mm
        self.xs = (np.arange(w, dtype=np.float32) - (w - 1) / 2) * spec.col_mm

    @cached_property
    def fan(self) -> np.ndarray:
        """Output pixels inside the sector (built on first use: drawing an exam needs no tables)."""
        rr = np.hypot(self.xs[None, :], self.ys[:, None])
        tt = np.arctan2(self.xs[None, :], self.ys[:, None])
        return (rr <= self.spec.depth_mm) & (np.abs(tt) <= self.spec.half_angle)

    @cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Scan conversion: (output pixel index, polar radial weight, angular weight, corner)."""
        half = self.spec.half_angle
        fan_idx = np.flatnonzero(self.fan)
        x = np.broadcast_to(self.xs[None, :], self.fan.shape).ravel()[fan_idx]
        y = np.broadcast_to(self.ys[:, None], self.fan.shape).ravel()[fan_idx]
        fr = np.clip(np.hypot(x, y) / POLAR_DR_MM - 0.5, 0, self.n_r - 1.001)
        ft = np.clip((np.arctan2(x, y) + half) / self.dt - 0.5, 0, self.n_t - 1.001)
        i0 = fr.astype(np.int64)
        j0 = ft.astype(np.int64)
        return fan_idx, (fr - i0).astype(np.float32), (ft - j0).astype(np.float32), i0 * self.n_t + j0

    def scan_convert(self, polar: np.ndarray) -> np.ndarray:
        """Bilinear polar -> Cartesian; zero outside the sector."""
        fan_idx, wr, wt, k = self._tables
        p = polar.ravel()
        n_t = self.n_t
        top = p[k] * (1 - wt) + p[k + 1] * wt
        bot = p[k + n_t] * (1 - wt) + p[k + n_t + 1] * wt
        out = np.zeros(self.spec.height * self.spec.width, np.uint8)
        out[fan_idx] = np.rint(top * (1 - wr) + bot * wr).astype(np.uint8)
        return out.reshape(self.spec.height, self.spec.width)

    def mask(self, heart: Heart) -> np.ndarray:
        """CAMUS labels at the output pixel centres, within the heart's bounding box and the fan."""
        spec = self.spec
        out = np.zeros((spec.height, spec.width), np.uint8)
        # The LV and the LA (|LA tilt| < 15 degrees) fit in this box of the LV's frame.
        reach_u = heart.length + 1.15 * heart.la_length + 0.3 * heart.la_width + 2
        reach_v = max(outer_halfwidth(heart), 0.6 * heart.la_width + 0.15 * heart.la_length) + 2
        ax, ay = math.sin(heart.tilt), math.cos(heart.tilt)
        cu = np.array([-heart.wall - 2, reach_u])
        cv = np.array([-reach_v, reach_v])
        cx = heart.apex_x + cu[:, None] * ax + cv[None, :] * ay
        cy = heart.apex_y + cu[:, None] * ay - cv[None, :] * ax
        r0, r1 = np.searchsorted(self.ys, [cy.min(), cy.max()])
        c0, c1 = np.searchsorted(self.xs, [cx.min(), cx.max()])
        if r1 <= r0 or c1 <= c0:
            return out
        out[r0:r1, c0:c1] = rasterise(
            lambda x, y: tissue_map(heart, x, y, labels_only=True), self.xs[c0:c1], self.ys[r0:r1])
        out[~self.fan] = 0
        return out


def rasterise(fn, xs: np.ndarray, ys: np.ndarray, step_r: int = 4, step_c: int = 2) -> np.ndarray:
    """``fn(x, y)`` at every pixel centre of the grid ``ys`` x ``xs``, exactly, but cheaply.

    ``fn`` is evaluated on a coarse grid first; only pixels whose coarse neighbourhood holds more
    than one value are evaluated again. Exact as long as no structure is thinner than the coarse
    step (here 0.6 mm; the thinnest labelled one, the myocardium, is 5 mm or more).
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


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="nearest")
    return f / max(float(f.std()), 1e-6)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


class Imager:
    """Renders the frames of one view; the acquisition's randomness is fixed at construction.

    ``spec`` is the phantom's ``ViewSpec``: it brings the geometry, the anatomy at ED and ES, the
    number of frames and the quality grade; everything else about the exam is drawn here from
    ``(seed, patient, 2, view)``, each frame's noise from ``(seed, patient, 3, view, frame)``.
    """

    def __init__(self, spec, seed: int, view_index: int):
        self.spec, self.seed, self.view_index = spec, seed, view_index
        self.sc = sc = Scanner(spec)
        rng = rng_for(seed, spec.patient, 2, view_index)
        q = float(rng.uniform(*_QUALITY[spec.quality]))  # 0 = best, 1 = worst
        self.q = q
        n_r, n_t = sc.n_r, sc.n_t
        r = sc.r

        # Echogenicity (dB relative to the myocardium) of every class for this exam.
        db = np.zeros(N_CLASSES, np.float32)
        blood = -(44 - 26 * q) + rng.normal(0, 2)
        db[LV], db[LA], db[RBLOOD] = blood, blood + rng.normal(0, 1.5), blood + rng.normal(0, 2)
        db[BG] = rng.uniform(-14, -5)
        db[WALL] = rng.uniform(-10, -3)
        db[PERI] = rng.uniform(2, 9)
        db[PAP] = rng.uniform(-6, 0)
        db[VALVE] = rng.uniform(-4, 4)
        db[BAND] = rng.uniform(-5, 1)
        self.echo = (10 ** (db / 20)).astype(np.float32)
        self.blood_class = np.zeros(N_CLASSES, bool)
        self.blood_class[list(BLOOD)] = True

        # Tissue texture (fixed to the patient) and cavity clutter ("smoke"), log-normal.
        self.tex = np.exp(0.5 * _smooth_field(rng, (n_r, n_t), (10, 4))).astype(np.float32)
        self.clutter = np.exp((0.3 + 0.6 * q) * _smooth_field(rng, (n_r, n_t), (20, 8))).astype(np.float32)

        # Additive near-field haze (with texture) and reverberation arcs, in amplitude units.
        haze_db = rng.uniform(-34, -26) + 18 * q
        haze_len = rng.uniform(8, 18) + 30 * q
        ring = 10 ** (rng.uniform(-6, 2) / 20) * np.exp(-r / rng.uniform(1.5, 4))
        haze = 10 ** (haze_db / 20) * np.exp(-r / haze_len)
        hz_tex = np.exp(0.7 * _smooth_field(rng, (n_r, n_t), (25, 10)))
        add = (ring + haze)[:, None] * hz_tex
        d0 = rng.uniform(6, 16)
        arc_db = rng.uniform(-30, -20) + 12 * q
        lat_mod = np.clip(0.6 + 0.4 * _smooth_field(rng, (1, n_t), (1, 15))[0], 0.1, None)
        for k in range(1, 5):
            arc = np.exp(-0.5 * ((r - k * d0) / rng.uniform(0.5, 1.2)) ** 2) * 0.55 ** (k - 1)
            add = add + 10 ** (arc_db / 20) * arc[:, None] * lat_mod[None, :]
        self.additive = add.astype(np.float32)

        # Multiplicative shadows: ribs at a sector edge (from the near field), lung on the lateral
        # side (from mid-depth).
        th = sc.th
        half = spec.half_angle
        shade = np.ones((n_r, n_t), np.float32)
        for p_shadow, r_range in ((0.3 + 0.4 * q, (3, 30)), (0.2 + 0.3 * q, (40, 90))):
            if rng.random() < p_shadow:
                side = 1 if (r_range[0] > 30 or rng.random() < 0.5) else -1
                width = math.radians(rng.uniform(3, 14))
                edge = _smoothstep((side * th - (half - width)) / math.radians(3))
                depth = _smoothstep((r - rng.uniform(*r_range)) / 6)
                strength = 1 - 10 ** (-rng.uniform(8, 25) / 20)
                shade *= 1 - strength * depth[:, None] * edge[None, :]
        self.shade = shade

        # Wall dropout segments along the lateral wall (v > 0) and the septum (v < 0):
        # (side, centre as a fraction of the LV length, half-width, depth).
        segs = []
        for side, p_side in ((1, 0.55 + 0.4 * q), (-1, 0.35 + 0.45 * q)):
            n = int(rng.random() < p_side) + int(rng.random() < 0.6 * q)
            for _ in range(n):
                segs.append((side, rng.uniform(0.2, 0.95), rng.uniform(0.08, 0.2),
                             min(0.98, rng.uniform(0.35, 0.7) + 0.35 * q)))
        self.dropout = segs
        self.incidence = 0.15 + 0.5 * q  # how much walls parallel to the beam lose

        # Calcified mitral annulus: a bright spot and the acoustic shadow behind it.
        self.calc = None
        if rng.random() < 0.25:
            self.calc = (1 if rng.random() < 0.6 else -1, rng.uniform(1.5, 2.5), rng.uniform(8, 15),
                         1 - 10 ** (-rng.uniform(8, 18) / 20))

        # Point-spread function (in polar samples) and side lobes.
        self.sigma = (rng.uniform(0.3, 0.5) / POLAR_DR_MM,
                      math.radians(rng.uniform(0.55, 0.9) + 0.5 * q) / sc.dt)
        self.sidelobe = np.float32(10 ** ((-(30 - 10 * q) + rng.normal(0, 2)) / 20))
        self.sidelobe_sigma = math.radians(rng.uniform(3, 6)) / sc.dt

        # Attenuation, noise and an imperfect TGC; then gain, dynamic range and grey map.
        att = rng.uniform(0.05, 0.12)  # dB/mm, two-way
        tgc_db = att * rng.uniform(0.55, 1.05) * r
        knots = rng.normal(0, 2.5, 6)
        tgc_db = tgc_db + np.interp(r, np.linspace(0, spec.depth_mm, 6), knots)
        self.atten = (10 ** (-att * r / 20)).astype(np.float32)[:, None]
        self.tgc = (10 ** (tgc_db / 20)).astype(np.float32)[:, None]
        self.noise = np.float32(10 ** ((rng.uniform(-60, -50) + 12 * q) / 20))
        # Unit-amplitude speckle after the PSF has this mean envelope: normalise to it.
        s2 = 1 / (4 * math.pi * self.sigma[0] * self.sigma[1])
        self.ref_db = 20 * math.log10(math.sqrt(s2 * math.pi / 2))
        self.gain_db = rng.uniform(-5, 5)
        self.dyn = rng.uniform(40, 60)
        self.headroom = rng.uniform(6, 14)
        self.reject = rng.uniform(0, 0.08)
        self.gamma = math.exp(rng.uniform(math.log(0.75), math.log(1.6)))

        # Speckle decorrelation: per-step correlation so that ED-ES keeps only 5-30 %.
        n = spec.nb_frames
        self.rho = float(rng.uniform(0.05, 0.3) ** (1 / max(n - 1, 1)))
        self._chain: tuple[int, np.ndarray] | None = None

    # ----------------------------------------------------------------------------------------

    def _scatterers(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Tissue scatterers of frame ``k`` (AR(1) chain over frames) and fresh ones (blood)."""
        shape = (2, self.sc.n_r, self.sc.n_t)
        start = 0
        g = None
        if self._chain is not None and self._chain[0] <= k:
            start, g = self._chain[0] + 1, self._chain[1]
        fresh = None
        for j in range(start, k + 1):
            fresh = rng_for(self.seed, self.spec.patient, 3, self.view_index, j).standard_normal(
                shape, dtype=np.float32)
            g = fresh if g is None else np.float32(self.rho) * g + np.float32(
                math.sqrt(1 - self.rho ** 2)) * fresh
        if fresh is None:  # frame k is the cached one
            fresh = rng_for(self.seed, self.spec.patient, 3, self.view_index, k).standard_normal(
                shape, dtype=np.float32)
        self._chain = (k, g)
        return g, fresh

    def _wall_gain(self, heart: Heart, cls: np.ndarray) -> np.ndarray:
        """Dropout of the myocardium: segments and incidence (walls along the beam fade)."""
        sc = self.sc
        u, v = lv_axes(heart, sc.px, sc.py)
        t = u / np.float32(heart.length)
        gain = np.ones(cls.shape, np.float32)
        for side, centre, width, depth in self.dropout:
            bump = np.exp(-0.5 * ((t - centre) / width) ** 2) * ((v * side) > 0)
            gain *= 1 - np.float32(depth) * bump
        # Side walls (normal across the long axis) seen by beams nearly parallel to them.
        along = np.abs(np.sin(sc.th[None, :] - np.float32(heart.tilt)))
        side_wall = _smoothstep((t - 0.1) / 0.25)
        gain *= 1 - np.float32(self.incidence) * side_wall * (1 - np.clip(along * 4, 0, 1))
        return np.where(cls == MYO, gain, np.float32(1))

    def _calcification(self, heart: Heart, amp: np.ndarray) -> np.ndarray:
        side, radius, _, strength = self.calc
        # Mitral annulus point on the chosen side, in image coordinates.
        hb = 0.5 * heart.width * 0.78 * (1 - side * heart.asym) + 0.5 * heart.wall
        u, v = heart.length, side * hb
        ax, ay = math.sin(heart.tilt), math.cos(heart.tilt)
        x, y = heart.apex_x + u * ax + v * ay, heart.apex_y + u * ay - v * ax
        rc, tc = math.hypot(x, y), math.atan2(x, y)
        sc = self.sc
        d2 = (sc.px - np.float32(x)) ** 2 + (sc.py - np.float32(y)) ** 2
        amp = amp + np.float32(3.0) * (d2 <= radius * radius)
        ang = np.abs(sc.th - np.float32(tc)) * np.float32(rc)  # lateral distance at the spot's depth
        behind = _smoothstep((sc.r - rc - radius) / 3)[:, None] * _smoothstep(
            (radius + 1 - ang) / 2)[None, :]
        return amp * (1 - np.float32(strength) * behind)

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of frame ``k`` (0 = ED, ``nb_frames - 1`` = ES)."""
        spec, sc = self.spec, self.sc
        heart = heart_at(spec.ed, spec.es, k / (spec.nb_frames - 1))
        cls = tissue_map(heart, sc.px, sc.py)
        blood = self.blood_class[cls]
        amp = self.echo[cls] * np.where(blood, self.clutter, self.tex) * self._wall_gain(heart, cls)
        if self.calc is not None:
            amp = self._calcification(heart, amp)
        amp = (amp + self.additive) * self.shade
        g, fresh = self._scatterers(k)
        re = amp * np.where(blood, fresh[0], g[0])
        im = amp * np.where(blood, fresh[1], g[1])
        re = ndimage.gaussian_filter(re, self.sigma, mode="nearest", truncate=3.0)
        im = ndimage.gaussian_filter(im, self.sigma, mode="nearest", truncate=3.0)
        inten = re * re + im * im
        lobes = ndimage.gaussian_filter1d(inten, self.sidelobe_sigma, axis=1, mode="nearest", truncate=2.5)
        inten = inten + self.sidelobe ** 2 * lobes
        noise = rng_for(self.seed, spec.patient, 4, self.view_index, k).standard_normal(
            (2, sc.n_r, sc.n_t), dtype=np.float32) * self.noise
        env = np.hypot(np.sqrt(inten) * self.atten + noise[0], noise[1]) * self.tgc
        db = 20 * np.log10(env + 1e-9) - self.ref_db + self.gain_db
        x = np.clip((db + self.dyn - self.headroom) / self.dyn, 0, 1)
        x = np.clip((x - self.reject) / (1 - self.reject), 0, 1) ** np.float32(self.gamma)
        polar = (x * 255).astype(np.float32)
        return sc.scan_convert(polar), sc.mask(heart)
