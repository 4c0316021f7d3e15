"""Grid of phantom patients: ED and ES images of one view, each beside its mask overlay.

    python bench/phantom_preview.py OUT.png [--patients 8] [--view 4CH] [--module FILE.py]

``--module`` renders with another version of the phantom module (e.g. an older one saved from
git), which must provide ``render_patient(seed, index, sequences)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import numpy as np
from PIL import Image, ImageDraw

COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 120, 240]], np.float32)


def load(path: str | None):
    if path is None:
        from cardigan.phantom import write as phantom
        return phantom
    spec = importlib.util.spec_from_file_location("cardigan._preview_phantom", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def tile(image: np.ndarray, mask: np.ndarray | None, height: int) -> np.ndarray:
    h, w = image.shape
    size = (max(1, round(w * height / h)), height)
    im = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR), np.float32)
    rgb = np.repeat(im[..., None], 3, axis=2)
    if mask is not None:
        m = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
        over = m > 0
        rgb[over] = 0.55 * rgb[over] + 0.45 * COLOURS[m[over]]
    return rgb.astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--view", default="4CH")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--height", type=int, default=200)
    ap.add_argument("--module")
    a = ap.parse_args(argv)
    mod = load(a.module)
    rows = []
    for i in range(a.first, a.first + a.patients):
        res = mod.render_patient(a.seed, i, sequences=False)
        frames = res["views"][a.view]
        n = res["spec"].views[a.view].nb_frames
        tiles = []
        for k in (0, n - 1):
            im, gt = frames[k]
            tiles += [tile(im, None, a.height), tile(im, gt, a.height)]
        label = f"{res['spec'].name} {res['spec'].quality}"
        rows.append((tiles, label))
    col_w = [max(r[0][j].shape[1] for r in rows) for j in range(4)]
    gap = 4
    H = len(rows) * (a.height + 14 + gap)
    W = sum(col_w) + 3 * gap
    canvas = np.full((H, W, 3), 255, np.uint8)
    y = 0
    for tiles, label in rows:
        x = 0
        for j, t in enumerate(tiles):
            canvas[y + 14:y + 14 + t.shape[0], x:x + t.shape[1]] = t
            x += col_w[j] + gap
        y += a.height + 14 + gap
    img = Image.fromarray(canvas)
    d = ImageDraw.Draw(img)
    y = 0
    for _, label in rows:
        d.text((2, y + 1), label + "   ED | ED+mask | ES | ES+mask", fill=(0, 0, 0))
        y += a.height + 14 + gap
    img.save(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
