"""Grey levels and speckle of the real acquisitions, measured on training images and imposed on
generated ones (sample.grey_levels, sample.speckle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from train_fixtures import field_images

from cardigan.gan.appearance import (
    FIELD_LEVEL,
    GREY_KEY,
    SPECKLE_KEY,
    Appearance,
    GreyLevels,
    Speckle,
    fine_texture,
    grain,
    texture_correlation,
    texture_strength,
)

SIZE = 64


def test_grey_levels_take_the_real_images_distribution_and_keep_the_order():
    real = field_images(3, SIZE)
    real[1][real[1] > 0] = (real[1][real[1] > 0] // 2 + 100)  # a narrow, bright grey map
    grey = GreyLevels.from_images(real, ["a", "b", "c"])
    assert grey.cdf.shape == (3, 256) and float(grey.cdf[0, FIELD_LEVEL]) == 0.0
    torch.testing.assert_close(grey.cdf[:, -1], torch.ones(3))
    back = GreyLevels.from_extra({GREY_KEY: grey.to_extra()})
    assert torch.equal(back.cdf, grey.cdf) and back.ids == grey.ids
    synthetic = field_images(1, SIZE, seed=5)[0]
    synthetic[synthetic == 0] = 3  # the generator's near-black outside the field
    out = grey.match(synthetic, 1)
    field = synthetic > FIELD_LEVEL
    assert np.array_equal(out[~field], synthetic[~field])  # outside the field: untouched
    target = real[1][real[1] > FIELD_LEVEL]
    assert abs(out[field].mean() - target.mean()) < 2 and abs(out[field].std() - target.std()) < 2
    order = np.argsort(synthetic[field], kind="stable")
    assert np.all(np.diff(out[field][order].astype(int)) >= 0)  # monotone: edges stay edges
    with pytest.raises(ValueError, match="blank"):
        GreyLevels.from_images(np.zeros((1, 8, 8), np.uint8), ["empty"])


def speckled(n: int, sigma: tuple[float, float], strength: float) -> np.ndarray:
    """Images of a flat, smoothly shaded region inside a disc, with noise of a known grain."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = np.hypot(yy - SIZE / 2, xx - SIZE / 2) < 0.44 * SIZE
    base = 100.0 + xx
    out = []
    for i in range(n):
        noisy = base + strength * grain((SIZE, SIZE), sigma, seed=100 + i)
        out.append(np.where(inside, np.clip(noisy, FIELD_LEVEL + 1, 255), 0))
    return np.round(np.stack(out)).astype(np.uint8)


def test_speckle_is_fitted_to_the_real_grain_and_strength():
    real = speckled(6, (0.75, 1.5), 20.0)
    fit = Speckle.from_images(real)
    assert abs(fit.sigma[0] - 0.75) <= 0.25 and abs(fit.sigma[1] - 1.5) <= 0.25
    measured = [texture_strength(*fine_texture(im)) for im in real]
    assert fit.strength == pytest.approx(float(np.median(measured)))
    back = Speckle.from_extra({SPECKLE_KEY: fit.to_extra()})
    assert back == fit
    assert Speckle.from_extra({}) is None


def test_speckle_brings_a_smooth_image_up_to_the_real_texture_and_spares_a_speckled_one():
    real = speckled(6, (0.75, 1.5), 20.0)
    fit = Speckle.from_images(real)
    smooth = speckled(1, (0.75, 1.5), 0.0)[0]
    smooth = np.where(smooth > 0, ndimage.gaussian_filter(smooth.astype(float), 1), 0)
    smooth = np.round(smooth).astype(np.uint8)
    out = fit.add(smooth, seed=1)
    field = smooth > FIELD_LEVEL
    assert np.array_equal(out[~field], smooth[~field])
    assert (out[field] > FIELD_LEVEL).all()
    strength = texture_strength(*fine_texture(out))
    assert strength == pytest.approx(fit.strength, rel=0.15)
    ry, rx = texture_correlation(*fine_texture(out))
    ry_real, rx_real = np.mean([texture_correlation(*fine_texture(im)) for im in real], axis=0)
    assert abs(ry - ry_real) < 0.1 and abs(rx - rx_real) < 0.1
    assert np.array_equal(fit.add(smooth, seed=1), out)  # per seed
    assert not np.array_equal(fit.add(smooth, seed=2), out)
    already = speckled(1, (0.75, 1.5), 30.0)[0]
    assert np.array_equal(fit.add(already, seed=1), already)  # strong enough: nothing added


def test_sampling_settings_need_the_records_and_name_the_key():
    images = field_images(2, SIZE)
    app = Appearance.measure(images, ["a", "b"])
    extra = app.to_extra()
    assert set(extra) == {GREY_KEY, SPECKLE_KEY}
    both = Appearance.for_sampling("real", "real", extra, "g.pt")
    assert both.grey.ids == ("a", "b") and both.speckle == app.speckle
    neither = Appearance.for_sampling("none", "none", {}, "g.pt")
    assert neither.grey is None and neither.speckle is None
    image = images[0]
    assert np.array_equal(neither.apply(image, 1, 0), image)
    with pytest.raises(ValueError, match="g.pt stores no speckle.*sample.speckle: none"):
        Appearance.for_sampling("none", "real", {GREY_KEY: extra[GREY_KEY]}, "g.pt")
    with pytest.raises(ValueError, match="g.pt stores no grey levels.*sample.grey_levels: none"):
        Appearance.for_sampling("real", "none", {}, "g.pt")
    with pytest.raises(ValueError, match="config key sample.speckle: 'auto'"):
        Appearance.for_sampling("none", "auto", extra, "g.pt")
    broken = {**extra, SPECKLE_KEY: {"strength": 1.0}}  # a record without its grain
    with pytest.raises(ValueError, match="g.pt: its speckle record is damaged.*sample.speckle"):
        Appearance.for_sampling("none", "real", broken, "g.pt")
