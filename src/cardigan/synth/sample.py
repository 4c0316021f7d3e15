"""Mask-conditioned sampling: masks (real and deformed) -> generator -> ``samples.h5``.

The order of the samples is fixed by the sources: for each source mask ``i`` (extracted files in
the order given, keys sorted, then user masks sorted by name), variant 0 is the mask itself and
variants 1..n its plausible deformations; each variant gets ``samples_per_mask`` images. Every
random number comes from a seed derived from ``(sample.seed, i, variant, ...)``, so a sample does
not depend on the batch size or on the other masks, and the same checkpoint + config + seed give a
byte-identical file on the CPU. Images are written batch by batch into chunked, resizable HDF5
datasets, so memory does not grow with the number of images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from cardigan.core.atomic import atomic_output
from cardigan.core.checksums import sha256_file
from cardigan.core.device import resolve_device as _resolve_device
from cardigan.core.labels import NUM_LABELS
from cardigan.core.version import __version__
from cardigan.data.frames import frame_id
from cardigan.data.masks import (
    MaskError,
    SourceMask,
    load_extracted_masks,
    load_user_masks,
    validate_masks,
)
from cardigan.data.plausibility import AreaRanges, check_plausible, topology
from cardigan.gan.appearance import Appearance
from cardigan.gan.background import BackgroundBank
from cardigan.gan.generator import SPADEGenerator
from cardigan.gan.generator_file import load_generator
from cardigan.gan.layers import one_hot
from cardigan.gan.model_config import ModelConfig
from cardigan.gan.styles import StyleBank, draw_styles, effective_source, is_multimodal
from cardigan.synth.deform import (
    AugmentConfig,
    DeformStats,
    deform_mask,
    deformed_variant,
    item_seed,
    params_json,
)
from cardigan.synth.samples_file import REAL_MASK_AUG, SampleWriter

log = logging.getLogger("cardigan")

#: Domain tags that keep the seed streams of deformations and style codes apart.
SEED_DEFORM, SEED_Z = 0, 1
def resolve_device(device: str) -> torch.device:
    return _resolve_device(device, "sample.device")


@dataclass
class _Item:
    mask: np.ndarray
    source: SourceMask
    variant: int
    augmentation: str
    seed: int
    style: int = 0  # which of the samples_per_mask images of this mask variant
    cond: np.ndarray | None = None  # the map the generator reads, when it differs from the mask
    own: str | None = None  # the frame whose style it takes (sample.own_styles), else None


def load_sources(anno_paths: Sequence[str | Path], mask_path: str | Path | None,
                 cfg: ModelConfig) -> list[SourceMask]:
    """Extracted masks of ``anno_paths`` plus the user masks of ``mask_path``, validated."""
    sources: list[SourceMask] = []
    if anno_paths:
        sources += validate_masks(load_extracted_masks(anno_paths), cfg.label_nc, cfg.image_size,
                                  what="extracted masks (sample.mask_splits)")
    if mask_path:
        sources += validate_masks(load_user_masks(mask_path), cfg.label_nc, cfg.image_size,
                                  what=f"user masks (sample.mask_path {mask_path})")
    if not sources:
        raise MaskError("no masks to condition on: sample.mask_splits is empty and sample.mask_path "
                        "is not set (or holds no masks)")
    return sources


def check_generator(cfg: ModelConfig, samples_per_mask: int, path: str | Path) -> None:
    """Refuse settings the checkpoint cannot honour."""
    if cfg.label_nc < NUM_LABELS:
        raise MaskError(
            f"{path}: the generator was trained with label_nc={cfg.label_nc}, but CAMUS masks use "
            f"labels 0..3 (label_nc must be at least {NUM_LABELS})"
        )
    if samples_per_mask > 1 and not is_multimodal(cfg):
        raise ValueError(
            f"config key sample.samples_per_mask: {samples_per_mask} asked for, but {path} is a "
            "mask-only generator (no train.use_vae, train.noise_dim or train.texture_noise): "
            "every sample of a mask would be the same image. Use samples_per_mask: 1, or retrain "
            "with a style input"
        )
    if not is_multimodal(cfg):
        log.info("mask-only generator (no style input): one image per mask; extra samples per "
                 "mask would be identical, so samples_per_mask must stay 1")


def background_of(src: SourceMask, background: BackgroundBank) -> np.ndarray:
    """The condition map of a source mask: its own training frame's background classes, or those
    of the training frame it overlaps best (:meth:`BackgroundBank.for_mask`)."""
    own = own_frame(src)
    cond, donor = background.for_mask(src.mask, own)
    if donor != own:
        log.info("%s (%s %s %s): background classes borrowed from training frame %s",
                 src.origin, src.patient, src.view, src.instant, donor)
    return cond


def own_frame(src: SourceMask) -> str | None:
    """The frame id of the image a source mask was drawn on (None for a user mask)."""
    return None if src.source == "user" else frame_id(src.patient, src.view, src.instant)


def sample_items(sources: Sequence[SourceMask], aug: AugmentConfig, ranges: AreaRanges, seed: int,
                 samples_per_mask: int, stats: DeformStats,
                 background: BackgroundBank | None = None, own_styles: int = 0
                 ) -> Iterator[_Item]:
    """Each source mask's variants (itself, then its plausible deformations), each
    ``samples_per_mask`` times with its own seed; with ``background``, each carries its condition
    map, deformed with the mask. The first ``own_styles`` samples of each variant are marked to
    take the style of the source mask's own frame."""
    for i, src in enumerate(sources):
        cond = None if background is None else background_of(src, background)
        own = own_frame(src)
        variants: list[tuple[np.ndarray, str, np.ndarray | None]] = [
            (src.mask, REAL_MASK_AUG, cond)]
        if aug.n:
            reason = check_plausible(src.mask, None, topology(src.mask))
            if reason is not None:
                stats.source_implausible += 1
                log.warning("%s (%s %s %s): the source mask itself fails the plausibility check "
                            "%r; its %d deformations are skipped", src.origin, src.patient,
                            src.view, src.instant, reason, aug.n)
        else:
            reason = None
        for k in range(1, aug.n + 1):
            if reason is not None:
                break
            made = deformed_variant(src.mask, aug, ranges, seed, i, k, stats)
            if made is None:
                log.warning("%s (%s %s %s): deformation %d rejected %d times: skipped",
                            src.origin, src.patient, src.view, src.instant, k, aug.max_tries)
                continue
            # the same warp of the same pixels: the map's labels stay the deformed mask's
            moved = None if cond is None else deform_mask(cond, made[1])
            variants.append((made[0], params_json(made[1]), moved))
        for k, (mask, augmentation, moved) in enumerate(variants):
            for s in range(samples_per_mask):
                yield _Item(mask, src, k, augmentation, item_seed(seed, SEED_Z, i, k, s), s, moved,
                            own if s < own_styles else None)


@torch.inference_mode()
def render(generator: SPADEGenerator, masks: np.ndarray, z: torch.Tensor | None,
             device: torch.device, noise: torch.Tensor | None = None) -> np.ndarray:
    """(B, H, W) uint8 masks (condition maps) -> (B, H, W) uint8 images: round((x + 1) * 127.5),
    clipped.

    ``z``/``noise``: the styles of :func:`cardigan.gan.styles.draw_styles` (None where the generator
    takes none)."""
    seg = one_hot(torch.from_numpy(masks).to(device), generator.cfg.cond_nc)
    if z is not None:
        z = z.to(device)
    if noise is not None:
        noise = noise.to(device)
    if device.type == "cuda":
        seg = seg.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = generator(seg, z, noise)
    else:
        out = generator(seg, z, noise)
    out = ((out.float()[:, 0] + 1) * 127.5).round().clamp(0, 255)
    return out.to(torch.uint8).cpu().numpy()


def style_frames(cfg: ModelConfig, style_source: str, bank: StyleBank | None,
                 appearance: Appearance) -> tuple[str, ...]:
    """The training frames whose style a sample can take, in the order
    :func:`cardigan.gan.styles.draw_styles` indexes them: the style bank's where codes come from
    it, else those whose grey levels the generator file stores (none: nothing to pair with)."""
    if effective_source(cfg, style_source, bank) == "real":
        return bank.ids
    return tuple(appearance.grey.ids) if appearance.grey is not None else ()


def batched(generator: SPADEGenerator, items: Iterable[_Item], batch_size: int,
            device: torch.device, *, samples_per_mask: int, style_source: str,
            bank: StyleBank | None, appearance: Appearance | None = None
            ) -> Iterator[tuple[list[_Item], np.ndarray, list[str]]]:
    """(items, images, style labels) batch by batch; each item's style (and the grey levels and
    speckle of ``appearance``) comes from its own seed (:func:`cardigan.gan.styles.draw_styles`).
    ``items`` come
    in groups of ``samples_per_mask`` styles of one mask, and a batch holds whole groups: the generator computes the mask-only
    part of its SPADE layers once per mask and reuses it for every style."""
    group = max(1, samples_per_mask)
    size = max(1, batch_size // group) * group
    appearance = appearance or Appearance()
    frames = style_frames(generator.cfg, style_source, bank, appearance)
    position = {frame: i for i, frame in enumerate(frames)}

    def make(batch: list[_Item]) -> tuple[list[_Item], np.ndarray, list[str]]:
        own = [position.get(it.own) for it in batch]
        styles = draw_styles(generator.cfg, [it.seed for it in batch], style_source, bank,
                             appearance.grey, own)
        masks = np.stack([it.mask if it.cond is None else it.cond for it in batch[::group]])
        images = render(generator, masks, styles.z, device, styles.noise)
        return batch, styles.apply(images, appearance), styles.labels

    batch: list[_Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield make(batch)
            batch = []
    if batch:
        yield make(batch)


@dataclass
class Loaded:
    """A generator ready to sample: checked against the sampling settings, on its device."""

    generator: SPADEGenerator
    cfg: ModelConfig
    extra: dict[str, Any]
    device: torch.device
    path: Path

    @cached_property
    def background(self) -> BackgroundBank | None:
        """The training frames' background classes (None: a generator trained without them),
        parsed once: the bank caches what it derives from its maps."""
        if not self.cfg.background_classes:
            return None
        return BackgroundBank.from_extra(self.extra, self.cfg.label_nc, self.path)


def open_generator(generator_path: str | Path, sample_cfg: Mapping[str, Any],
                   threads: int | None = 1) -> Loaded:
    """Load ``generator_path``, refuse settings it cannot honour, move it to sample.device.
    ``threads``: torch's CPU threads for this process (None: leave them as they are)."""
    device = resolve_device(str(sample_cfg["device"]))
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    generator, cfg, extra = load_generator(generator_path)
    check_generator(cfg, int(sample_cfg["samples_per_mask"]), generator_path)
    generator.to(device)
    if device.type == "cuda":
        generator.to(memory_format=torch.channels_last)
    return Loaded(generator, cfg, extra, device, Path(generator_path))


@dataclass(frozen=True)
class Settings:
    """The ``sample`` section resolved against the generator file."""

    samples_per_mask: int
    batch_size: int
    seed: int
    augment: AugmentConfig
    bank: StyleBank | None
    style_source: str  # as configured
    used_source: str  # what the generator can do with it (cardigan.gan.styles.effective_source)
    appearance: Appearance
    own_styles: int  # samples of each mask variant in the style of the mask's own frame

    @classmethod
    def resolve(cls, loaded: Loaded, sample_cfg: Mapping[str, Any]) -> Settings:
        bank = StyleBank.from_extra(loaded.extra)
        style_source = str(sample_cfg["style_source"])
        return cls(int(sample_cfg["samples_per_mask"]), int(sample_cfg["batch_size"]),
                   int(sample_cfg["seed"]), AugmentConfig.from_dict(sample_cfg["augment"]), bank,
                   style_source, effective_source(loaded.cfg, style_source, bank),
                   Appearance.for_sampling(str(sample_cfg["grey_levels"]),
                                           str(sample_cfg["speckle"]), loaded.extra, loaded.path),
                   own_styles_of(sample_cfg))


def own_styles_of(sample_cfg: Mapping[str, Any]) -> int:
    """``sample.own_styles``, checked against ``sample.samples_per_mask``."""
    own, per_mask = int(sample_cfg["own_styles"]), int(sample_cfg["samples_per_mask"])
    if not 0 <= own <= per_mask:
        raise ValueError(f"config key sample.own_styles: {own} must be between 0 and "
                         f"sample.samples_per_mask ({per_mask})")
    return own


def write_samples(loaded: Loaded, sources: Sequence[SourceMask], ranges: AreaRanges,
                  sample_cfg: Mapping[str, Any], out_path: str | Path) -> dict[str, Any]:
    """Sample every mask of ``sources`` (and its deformations, checked against ``ranges``) into
    ``out_path`` (the samples.h5 layout); returns a summary (counts, rejections, images/s)."""
    settings = Settings.resolve(loaded, sample_cfg)
    _log_settings(loaded, settings, sources, ranges)
    stats = DeformStats()
    t0 = time.perf_counter()
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        writer = SampleWriter(f, loaded.cfg.image_size)
        _write_images(writer, loaded, settings, sources, ranges, stats, t0)
        writer.record(**_provenance(loaded, settings, sample_cfg, stats, ranges, len(sources)))
    return _summary(out_path, writer.n, sources, settings, stats, time.perf_counter() - t0)


def _log_settings(loaded: Loaded, settings: Settings, sources: Sequence[SourceMask],
                  ranges: AreaRanges) -> None:
    appearance, bank, used = settings.appearance, settings.bank, settings.used_source
    if appearance.grey is not None:
        log.info("grey levels: matched to those of the real training image lending each style "
                 "(%d stored in the generator file)", len(appearance.grey.ids))
    if appearance.speckle is not None:
        log.info("speckle: brought up to the real images' fine-texture strength %.1f, grain %s",
                 appearance.speckle.strength, appearance.speckle.sigma)
    if loaded.cfg.use_vae:
        log.info("style codes: %s%s", used,
                 f" (encodings of {len(bank.ids)} real training images)" if used == "real"
                 else " (N(0, I))" + ("" if bank is not None else
                                      ": the generator file carries no style bank"))
    log.info("%d source masks; %d deformations each, %d samples per mask; label-area ranges %s",
             len(sources), settings.augment.n, settings.samples_per_mask, ranges.to_dict())
    if settings.own_styles:
        frames = set(style_frames(loaded.cfg, settings.style_source, bank, appearance))
        unpaired = sum(own_frame(src) not in frames for src in sources)
        log.info("own styles: the first %d of each mask's %d samples take the style of the frame "
                 "the mask comes from%s", settings.own_styles, settings.samples_per_mask,
                 f"; {unpaired} of {len(sources)} source masks have no training frame with a "
                 "stored style and draw every style at random" if unpaired else "")
    log.info("generator %s: %s (extra: %s) on %s, batch %d", loaded.path, loaded.cfg.to_dict(),
             _scalars(loaded.extra), loaded.device, settings.batch_size)


def _scalars(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The generator file's scalar training record (not its tensors and tables)."""
    return {k: v for k, v in extra.items() if isinstance(v, (int, float, str, bool))}


def _expected(sources: Sequence[SourceMask], settings: Settings) -> int:
    return len(sources) * (1 + settings.augment.n) * settings.samples_per_mask


def _write_images(writer: SampleWriter, loaded: Loaded, settings: Settings,
                  sources: Sequence[SourceMask], ranges: AreaRanges, stats: DeformStats,
                  t0: float) -> None:
    """Every sample, batch by batch, in the sources' order."""
    expected = _expected(sources, settings)
    items = sample_items(sources, settings.augment, ranges, settings.seed,
                         settings.samples_per_mask, stats, loaded.background, settings.own_styles)
    next_log = 0
    for batch, images, styles in batched(
            loaded.generator, items, settings.batch_size, loaded.device,
            samples_per_mask=settings.samples_per_mask, style_source=settings.style_source,
            bank=settings.bank, appearance=settings.appearance):
        writer.append(images, np.stack([it.mask for it in batch]), {
            "source": [it.source.source for it in batch],
            "source_patient": [it.source.patient for it in batch],
            "view": [it.source.view for it in batch],
            "instant": [it.source.instant for it in batch],
            "variant": [it.variant for it in batch],
            "augmentation": [it.augmentation for it in batch],
            "seed": [it.seed for it in batch],
            "style": styles,
            "spacing": [it.source.spacing for it in batch],
            "is_synthetic": [True] * len(batch),
        })
        if writer.n >= next_log:
            log.info("%d / at most %d images (%.1f images/s)", writer.n, expected,
                     writer.n / (time.perf_counter() - t0))
            next_log += max(settings.batch_size, expected // 10)
    if writer.n == 0:
        raise RuntimeError("no samples were made")


def _provenance(loaded: Loaded, settings: Settings, sample_cfg: Mapping[str, Any],
                stats: DeformStats, ranges: AreaRanges, n_sources: int) -> dict[str, Any]:
    """samples.h5's attributes: the generator, the settings, what the deformations did."""
    cfg, appearance = loaded.cfg, settings.appearance
    return {
        "image_size": cfg.image_size,
        "label_nc": cfg.label_nc,
        "model_config": cfg.to_dict(),
        "generator_sha256": sha256_file(loaded.path),
        "generator_extra": _scalars(loaded.extra),
        "sample_config": dict(sample_cfg),
        "style_source": settings.used_source,
        "grey_levels": "real" if appearance.grey is not None else "none",
        "speckle": "real" if appearance.speckle is not None else "none",
        "augment_stats": stats.to_dict(),
        "area_ranges": ranges.to_dict(),
        "n_sources": n_sources,
        "cardigan_version": __version__,
    }


def _summary(out_path: str | Path, n: int, sources: Sequence[SourceMask], settings: Settings,
             stats: DeformStats, seconds: float) -> dict[str, Any]:
    summary = {"images": n, "sources": len(sources), "seconds": seconds,
               "images_per_s": n / seconds if seconds > 0 else float("nan"), **stats.to_dict()}
    log.info("wrote %s: %d images from %d source masks in %.1f s (%.1f images/s)", out_path, n,
             len(sources), seconds, summary["images_per_s"])
    log.info("deformations: %d accepted; rejected draws by reason %s; %d given up after %d tries; "
             "%d source masks failed the check themselves", stats.accepted, dict(stats.rejected),
             stats.exhausted, settings.augment.max_tries, stats.source_implausible)
    expected = _expected(sources, settings)
    if n < expected:
        log.warning("%d fewer images than %d sources x (1 + %d) x %d because of skipped "
                    "deformations (counted above)", expected - n, len(sources),
                    settings.augment.n, settings.samples_per_mask)
    return summary


def run_sample(generator_path: str | Path, anno_paths: Sequence[str | Path],
               real_train_anno_paths: Sequence[str | Path], sample_cfg: Mapping[str, Any],
               out_path: str | Path, threads: int = 1) -> dict[str, Any]:
    """Write ``samples.h5`` and return a summary (counts, rejection statistics, images/s)."""
    loaded = open_generator(generator_path, sample_cfg, threads)
    cfg = loaded.cfg
    sources = load_sources(anno_paths, sample_cfg["mask_path"], cfg)
    real = validate_masks(load_extracted_masks(real_train_anno_paths), cfg.label_nc,
                          cfg.image_size, what="real train masks (area ranges)")
    ranges = AreaRanges.from_masks(m.mask for m in real)
    log.info("label-area ranges from %d real train masks", len(real))
    return write_samples(loaded, sources, ranges, sample_cfg, out_path)
