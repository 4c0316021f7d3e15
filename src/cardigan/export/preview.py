"""preview.png: a few samples of synthetic.h5 over their masks."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

import h5py
import numpy as np

from cardigan.core.atomic import atomic_output
from cardigan.core.plots import PNG_METADATA, overlay_colormap, plt
from cardigan.export.synthetic_h5 import decode_strings


def preview_rows(keys: Sequence[Hashable], n: int, max_styles: int = 4) -> list[int]:
    """Rows for the preview: ``keys`` names each row's mask (the styles of one mask are
    consecutive rows with equal keys); about ``n`` rows from evenly spaced masks, each mask with
    all its styles (at most ``max_styles``)."""
    total = len(keys)
    if total == 0:
        return []
    starts = [i for i in range(total) if i == 0 or keys[i] != keys[i - 1]]
    ends = starts[1:] + [total]
    per_mask = max(1, min(max_styles, max(e - s for s, e in zip(starts, ends))))
    picks = np.linspace(0, len(starts) - 1, max(1, min(len(starts), n // per_mask)))
    rows: list[int] = []
    for g in sorted(set(picks.round().astype(int).tolist())):
        rows += list(range(starts[g], min(ends[g], starts[g] + per_mask)))
    return rows


def write_preview(h5_path: str | Path, out_path: str | Path, n: int = 8) -> None:
    """A grid of ``n`` samples, image on top and mask overlay below: evenly spaced masks, each
    with all its styles side by side (up to four), so one mask's different looks are seen."""
    with h5py.File(h5_path, "r") as f:
        total = f["images"].shape[0]
        keys = list(zip(*(decode_strings(f[k][()]) for k in ("source_patient", "view", "instant")),
                        f["variant"][()].tolist()))
        styles = decode_strings(f["style"][()]) if "style" in f else [""] * total
        rows = preview_rows(keys, n)
        images = [f["images"][i] for i in rows]
        masks = [f["masks"][i] for i in rows]
        titles = []
        for i in rows:
            kind = ("real image" if not f["is_synthetic"][i]
                    else "deformed mask" if f["variant"][i] > 0 else "real mask")
            look = styles[i].partition(":")[2].partition("+")[0] or styles[i]
            titles.append(f"{keys[i][0]} {keys[i][1]} {keys[i][2]}\n{kind}"
                          + (f"\nstyle: {look}" if look else ""))
    cols = len(rows)
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.4), squeeze=False)
    for j in range(cols):
        axes[0, j].imshow(images[j], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0, j].set_title(titles[j], fontsize=6)
        axes[1, j].imshow(images[j], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[1, j].imshow(masks[j], cmap=overlay_colormap(), vmin=0, vmax=3, interpolation="nearest")
        for ax in axes[:, j]:
            ax.set_axis_off()
    fig.suptitle("cardiGAN samples (top) and their masks (bottom: red cavity, green myocardium, "
                 "blue atrium)", fontsize=7)
    fig.tight_layout()
    with atomic_output(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
