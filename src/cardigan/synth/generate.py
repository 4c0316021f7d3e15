"""Sampling from your own masks with only a trained generator file (no training data at hand).

Python::

    import cardigan
    out = cardigan.generate("results/train/generator.pt", "my_masks/", styles=4, seed=0)
    out.images  # (N, H, W) uint8, mask by mask: each mask's variants, each with ``styles`` images

Command line (:func:`write_from_masks`, with :func:`sample_settings` for its options)::

    cardigan sample --generator results/train/generator.pt --masks DIR_OR_H5 --out OUT.h5

The masks are read and validated as ``sample.mask_path`` is (a folder of PNG/NIfTI/MHA/NRRD
label images, or an HDF5 file; other sizes are resized with nearest neighbour), deformed
``augment`` times each like the sample stage does, with the plausibility ranges stored in the
generator file at training time, and turned into images with the sample stage's batching and
style codes (:mod:`cardigan.synth.sample`). Unset settings take the ``sample`` section's defaults of
the config schema (or of ``--config``). ``OUT.h5`` has the layout of ``samples.h5``.

``cardigan.generate`` is this module's :func:`generate` (loaded on first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The heavy imports (torch, h5py, the model) happen inside the functions: the package's
# __init__ exports generate(), and `import cardigan` (e.g. by the Snakefile) must stay light.


@dataclass
class Generated:
    """What :func:`generate` made. Row ``j`` is image ``images[j]`` of mask ``masks[j]``, which is
    variant ``variant[j]`` (0: the input mask, k >= 1: its k-th deformation) of input mask
    ``source[j]``, drawn with style ``style[j]`` (0..styles-1) from seed ``seed[j]``."""

    images: np.ndarray
    masks: np.ndarray
    source: np.ndarray
    variant: np.ndarray
    style: np.ndarray
    seed: np.ndarray
    names: list[str] = field(default_factory=list)  # the input masks' names (file stems)
    stats: dict[str, Any] = field(default_factory=dict)  # deformation statistics
    style_source: list[str] = field(default_factory=list)  # per row, as cardigan.gan.styles labels


def sample_settings(section: Mapping[str, Any], *, augment: int | None = None,
                    styles: int | None = None, seed: int | None = None,
                    batch_size: int | None = None, device: str | None = None) -> dict[str, Any]:
    """A validated ``sample`` section with the given values set (None: the section's); the
    options of :func:`generate` and of ``cardigan sample --masks``."""
    for name, value, least in (("augment", augment, 0), ("styles", styles, 1),
                               ("seed", seed, 0), ("batch_size", batch_size, 1)):
        if value is not None and int(value) < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    cfg = dict(section)
    cfg["augment"] = dict(cfg["augment"])
    if augment is not None:
        cfg["augment"]["n"] = int(augment)
    for key, value in (("samples_per_mask", styles), ("seed", seed),
                       ("batch_size", batch_size), ("device", device)):
        if value is not None:
            cfg[key] = value
    return cfg


def _sources(masks: Any, cfg) -> list:
    from cardigan.data.masks import UNKNOWN, SourceMask, load_user_masks, validate_masks

    if isinstance(masks, (str, Path)):
        found = load_user_masks(masks)
        what = f"masks {masks}"
    else:
        arr = np.asarray(masks)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"masks must be a path, an (H, W) or an (N, H, W) array, got shape "
                             f"{arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"masks must hold integer labels 0..3, got dtype {arr.dtype}")
        found = [SourceMask("user", f"mask{i:05d}", UNKNOWN, UNKNOWN, a.astype(np.uint8),
                            (np.nan, np.nan), f"masks[{i}]") for i, a in enumerate(arr)]
        what = "masks array"
    return validate_masks(found, cfg.label_nc, cfg.image_size, what=what)


def _ranges(loaded, n_augment: int):
    from cardigan.data.plausibility import AreaRanges, ranges_from_extra

    if n_augment == 0:  # no deformations: nothing to check, the generator file need not have them
        return AreaRanges({})
    return ranges_from_extra(loaded.extra, loaded.path)


def generate(generator: str | Path, masks: Any, styles: int | None = None,
             seed: int | None = None, *, augment: int | None = None,
             batch_size: int | None = None, device: str | None = None,
             threads: int | None = None, config: str | Path | None = None) -> Generated:
    """Images for ``masks`` from the generator file ``generator``.

    ``masks``: a folder of mask files, an HDF5 file of masks, or an (N, H, W) / (H, W) integer
    array with labels 0..3. ``styles``: images per mask (and per deformation); more than one
    needs a generator with a style input (VAE, 3D noise or texture noise); VAE styles come from
    the real style bank stored in the generator file (``sample.style_source``), and each image
    takes the grey levels of a real training image and the real images' speckle
    (``sample.grey_levels``, ``sample.speckle``). ``augment``:
    plausible random deformations per mask.
    ``styles``, ``seed``, ``augment``, ``batch_size`` and ``device`` default to the config's
    ``sample`` section (``samples_per_mask``, ``seed``, ``augment.n``, ...). The same inputs give
    the same images on the CPU. ``threads``: torch's CPU threads (None: as they are).
    """
    from cardigan.core.config import load_config
    from cardigan.gan.appearance import Appearance
    from cardigan.gan.styles import StyleBank
    from cardigan.synth.deform import AugmentConfig, DeformStats
    from cardigan.synth.sample import batched, open_generator, sample_items

    cfg = sample_settings(load_config(config)["sample"], augment=augment, styles=styles,
                          seed=seed, batch_size=batch_size, device=device)
    aug = AugmentConfig.from_dict(cfg["augment"])
    loaded = open_generator(generator, cfg, threads)
    sources = _sources(masks, loaded.cfg)
    ranges = _ranges(loaded, aug.n)
    index = {id(s): i for i, s in enumerate(sources)}
    stats = DeformStats()
    items = sample_items(sources, aug, ranges, int(cfg["seed"]), int(cfg["samples_per_mask"]),
                         stats, loaded.background)
    images, out_masks, rows, labels = [], [], [], []
    bank = StyleBank.from_extra(loaded.extra)
    for batch, imgs, styles_used in batched(
            loaded.generator, items, int(cfg["batch_size"]), loaded.device,
            samples_per_mask=int(cfg["samples_per_mask"]), style_source=str(cfg["style_source"]),
            bank=bank, appearance=Appearance.for_sampling(
                str(cfg["grey_levels"]), str(cfg["speckle"]), loaded.extra, generator)):
        images.append(imgs)
        labels += styles_used
        out_masks.append(np.stack([it.mask for it in batch]))
        rows += [(index[id(it.source)], it.variant, it.style, it.seed) for it in batch]
    cols = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return Generated(np.concatenate(images), np.concatenate(out_masks), cols[:, 0], cols[:, 1],
                     cols[:, 2], cols[:, 3], [s.patient for s in sources], stats.to_dict(),
                     labels)


def write_from_masks(generator: str | Path, masks: str | Path, out: str | Path,
                     sample_cfg: dict[str, Any], threads: int | None = 1) -> dict[str, Any]:
    """``out`` (the samples.h5 layout) from the masks under ``masks`` with the generator file
    alone, as the validated ``sample`` section says (``mask_splits`` and ``mask_path`` are
    replaced by ``masks``); returns the summary."""
    from cardigan.synth.deform import AugmentConfig
    from cardigan.synth.sample import load_sources, open_generator, write_samples

    cfg = {**sample_cfg, "mask_splits": [], "mask_path": str(masks)}
    loaded = open_generator(generator, cfg, threads)
    sources = load_sources([], masks, loaded.cfg)
    ranges = _ranges(loaded, AugmentConfig.from_dict(cfg["augment"]).n)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_samples(loaded, sources, ranges, cfg, out)
