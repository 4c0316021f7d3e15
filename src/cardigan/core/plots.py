"""Figures: the label palette, loss curves and image/mask grids, and the one place that picks
matplotlib's backend (every module that draws takes ``plt`` from here).

Every PNG is byte-reproducible: the Agg backend, a fixed size and dpi, and no ``Software``
metadata (matplotlib would otherwise stamp its version, which is fine, but nothing else varies).
``save_grid`` is deliberately general (rows of grayscale images and label masks, optional column
titles) so the sampling and export stages can reuse it for their previews.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from cardigan.core.atomic import atomic_output  # noqa: E402

PNG_METADATA = {"Software": None}

#: Colours of the CAMUS labels (background black, LV cavity red, myocardium green, LA blue);
#: further labels (a larger train.label_nc) take tab10 colours.
LABEL_COLOURS = [(0, 0, 0), (230, 60, 60), (60, 200, 90), (70, 120, 240)]


def overlay_colormap(alpha: float = 0.45) -> ListedColormap:
    """The label palette for drawing a mask over its image: background transparent."""
    return ListedColormap([(0, 0, 0, 0)] + [(r / 255, g / 255, b / 255, alpha)
                                            for r, g, b in LABEL_COLOURS[1:]])


def label_rgb(mask: np.ndarray, label_nc: int | None = None) -> np.ndarray:
    """(H, W) integer mask -> (H, W, 3) uint8 colour image."""
    n = max(int(mask.max()) + 1 if mask.size else 1, label_nc or 0, len(LABEL_COLOURS))
    colours = list(LABEL_COLOURS)
    tab = plt.get_cmap("tab10")
    while len(colours) < n:
        r, g, b, _ = tab(len(colours) % 10)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.asarray(colours, dtype=np.uint8)[mask.astype(np.int64)]


def _savefig_atomic(fig, path: str | Path, dpi: int) -> None:
    try:
        with atomic_output(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, metadata=PNG_METADATA)
    finally:
        plt.close(fig)


def _to_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype.kind == "f":
        img = np.clip((img + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img.astype(np.uint8)


def mosaic(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile rows of images (see :func:`save_grid`) into one (H, W, 3) uint8 image, cells as
    large as the largest image, ``pad`` pixels of ``fill`` between them."""
    if not rows or not any(len(r) for r in rows):
        raise ValueError("need at least one row with one image")
    cells = [[_to_rgb(img) for img in row] for row in rows]
    ch = max(c.shape[0] for row in cells for c in row)
    cw = max(c.shape[1] for row in cells for c in row)
    n_cols = max(len(row) for row in cells)
    out = np.full((len(cells) * (ch + pad) + pad, n_cols * (cw + pad) + pad, 3), fill, np.uint8)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            y, x = pad + r * (ch + pad), pad + c * (cw + pad)
            out[y:y + img.shape[0], x:x + img.shape[1]] = img
    return out


def save_grid(
    path: str | Path,
    rows: Sequence[Sequence[np.ndarray]],
    *,
    col_titles: Sequence[str] | None = None,
    title: str | None = None,
    scale: float = 1.0,
) -> None:
    """Write a grid of images as a PNG, one list per row, with optional column titles and title.

    Each cell is a (H, W) uint8 grayscale image, a (H, W, 3) uint8 RGB image (use
    :func:`label_rgb` for masks), or a float (H, W) image in [-1, 1] (generator output). Pixels
    are shown 1:1 (times ``scale``), without interpolation.
    """
    tiles = mosaic(rows)
    dpi = 100
    text_px = (18 if col_titles else 0) + (24 if title else 0)
    h_px, w_px = tiles.shape[0] * scale, tiles.shape[1] * scale
    w_px = max(w_px, 160)
    fig = plt.figure(figsize=(w_px / dpi, (h_px + text_px) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, tiles.shape[1] * scale / w_px, h_px / (h_px + text_px)))
    ax.imshow(tiles, interpolation="nearest")
    ax.set_axis_off()
    top = h_px / (h_px + text_px)
    if col_titles:
        cell_w = (tiles.shape[1] - 2) / max(len(r) for r in rows)
        for c, name in enumerate(col_titles):
            x = (2 + (c + 0.5) * cell_w) * scale / w_px
            fig.text(x, top + 2 / (h_px + text_px), name, ha="center", va="bottom", fontsize=8)
    if title:
        fig.text(0.5, 1 - 4 / (h_px + text_px), title, ha="center", va="top", fontsize=10)
    _savefig_atomic(fig, path, dpi)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that shrinks its window at the ends (no lag, same length)."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or values.size < 3:
        return values
    window = min(window, values.size)
    kernel = np.ones(window)
    num = np.convolve(values, kernel, mode="same")
    den = np.convolve(np.ones_like(values), kernel, mode="same")
    return num / den


def plot_losses(
    path: str | Path,
    steps: np.ndarray,
    columns: dict[str, np.ndarray],
    *,
    groups: dict[str, Sequence[str]] | None = None,
    title: str | None = None,
) -> None:
    """Loss curves: one panel per group (default: one per column), raw values faint and a
    smoothed line on top (window ~5% of the points)."""
    groups = groups or {name: [name] for name in columns}
    groups = {g: [c for c in cols if c in columns] for g, cols in groups.items()}
    groups = {g: cols for g, cols in groups.items() if cols}
    if not groups:
        raise ValueError("plot_losses: no columns to plot")
    steps = np.asarray(steps)
    window = max(1, len(steps) // 20)
    n = len(groups)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, (group, cols) in zip(axes.flat, groups.items()):
        for i, col in enumerate(cols):
            colour = f"C{i}"
            values = np.asarray(columns[col], dtype=np.float64)
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(values, window), color=colour, linewidth=1.6, label=col)
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(cols) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _savefig_atomic(fig, path, dpi=100)
