"""Resizing frames to the square training size: smooth for images, nearest for label masks.

Pillow's resampling is used because it is an order of magnitude faster than scikit-image's on
uint8 frames: its BILINEAR filter is a triangle kernel whose support is widened by the reduction
factor when shrinking, i.e. anti-aliased (area-weighted) downsampling and plain bilinear
upsampling, computed in fixed point and rounded back to uint8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased bilinear resize of a (H, W) uint8 frame to (size, size)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    if image.shape == (size, size):
        return image.copy()
    out = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8).copy()


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) uint8 label mask: every output value is an input value."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 mask, got {mask.dtype} {mask.shape}")
    if mask.shape == (size, size):
        return mask.copy()
    out = Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(out, dtype=np.uint8).copy()


def resized_spacing(spacing: tuple[float, float], shape: tuple[int, int], size: int) -> tuple[float, float]:
    """(row mm, column mm) after stretching an (H, W) frame to size x size (aspect is not kept)."""
    return spacing[0] * shape[0] / size, spacing[1] * shape[1] / size
