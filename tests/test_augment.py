"""Deformations of masks and their plausibility checks."""

import json

import numpy as np
import pytest

from cardigan.data.masks import toy_heart_mask
from cardigan.data.plausibility import AreaRanges, check_plausible, topology
from cardigan.synth.deform import (
    AugmentConfig,
    DeformStats,
    deform_mask,
    deformed_variant,
    draw_params,
    item_seed,
    params_json,
)

SIZE = 64
IDENTITY = {"rotation_deg": 0.0, "scale": 1.0, "translation": [0.0, 0.0], "elastic_alpha": 0.0,
            "elastic_sigma": 1.0, "elastic_seed": 0}


@pytest.fixture(scope="module")
def masks():
    rng = np.random.default_rng(0)
    return [toy_heart_mask(SIZE, rng) for _ in range(10)]


@pytest.fixture(scope="module")
def ranges(masks):
    return AreaRanges.from_masks(masks)


def test_toy_masks_are_plausible(masks, ranges):
    for m in masks:
        assert set(np.unique(m)) == {0, 1, 2, 3}
        assert check_plausible(m, ranges) is None


def test_identity_deformation_keeps_the_mask(masks):
    assert np.array_equal(deform_mask(masks[0], IDENTITY), masks[0])


def test_deformation_keeps_labels_and_changes_shape(masks):
    params = draw_params(AugmentConfig(rotation_deg=10, elastic_alpha=4), seed=3)
    out = deform_mask(masks[0], params)
    assert out.dtype == np.uint8 and out.shape == masks[0].shape
    assert set(np.unique(out)) <= {0, 1, 2, 3}  # nearest resampling: no new values
    assert not np.array_equal(out, masks[0])


def test_pure_translation_moves_the_mask(masks):
    shifted = deform_mask(masks[0], {**IDENTITY, "translation": [4 / SIZE, 0.0]})
    assert np.array_equal(shifted[4:], masks[0][:-4])
    assert not shifted[:4].any()


def test_params_json_rebuilds_the_same_mask(masks):
    params = draw_params(AugmentConfig(), seed=11)
    again = json.loads(params_json(params))
    assert np.array_equal(deform_mask(masks[1], params), deform_mask(masks[1], again))


def test_seeds_are_deterministic_and_distinct():
    assert item_seed(0, 1, 2) == item_seed(0, 1, 2)
    assert item_seed(0, 1, 2) != item_seed(0, 1, 3)
    assert 0 <= item_seed(5, 9) < 2**63


def test_plausibility_reasons(masks, ranges):
    m = masks[0]
    no_atrium = np.where(m == 3, 0, m).astype(np.uint8)
    assert check_plausible(no_atrium, None) == "missing_label"

    split = m.copy()
    split[2:5, 2:5] = 1  # a second, detached piece of cavity
    assert check_plausible(split, None) == "fragmented"

    small = AreaRanges({1: (0, 10), 2: (0, 1e9), 3: (0, 1e9)})
    assert check_plausible(m, small) == "area"

    # the atrium moves away: the cavity opens onto background at the mitral plane
    open_base = np.where(m == 3, 0, m).astype(np.uint8)
    open_base[-3:, -3:] = 3
    assert check_plausible(open_base, None) == "cavity_open"


def test_atrium_wrapping_the_cavity_is_rejected(masks):
    m = masks[0].copy()
    m[m == 2] = 3  # the wall becomes atrium: still closed, but no myocardium around the cavity
    m[0:2, 0:2] = 2  # keep a (detached from the cavity) myocardium present
    assert check_plausible(m, None) == "cavity_open"


def test_deformed_variant_counts_rejections_and_gives_up(masks):
    stats = DeformStats()
    impossible = AreaRanges({1: (0, 1), 2: (0, 1), 3: (0, 1)})
    cfg = AugmentConfig(max_tries=5)
    assert deformed_variant(masks[0], cfg, impossible, 0, 0, 1, stats) is None
    assert stats.exhausted == 1 and stats.rejected["area"] == 5 and stats.accepted == 0


def test_deformed_variant_is_reproducible(masks, ranges):
    cfg = AugmentConfig()
    a = deformed_variant(masks[2], cfg, ranges, 7, 2, 1, DeformStats())
    b = deformed_variant(masks[2], cfg, ranges, 7, 2, 1, DeformStats())
    c = deformed_variant(masks[2], cfg, ranges, 7, 2, 2, DeformStats())
    assert a is not None and b is not None and c is not None
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])
    assert check_plausible(a[0], ranges) is None
    assert np.array_equal(deform_mask(masks[2], a[1]), a[0])


def test_area_ranges_need_masks():
    with pytest.raises(ValueError, match="no real masks"):
        AreaRanges.from_masks([])


def test_checks_are_relative_to_an_imperfect_source(masks):
    m = masks[0]
    open_base = np.where(m == 3, 0, m).astype(np.uint8)
    open_base[-3:, -3:] = 3  # the cavity touches background at its base, as a cut wall would
    speck = m.copy()
    speck[0, 0] = 2  # a one-pixel myocardium speck (nearest resizing): ignored
    assert check_plausible(speck, None) is None
    ref = topology(open_base)
    assert ref.open_fraction > 0.05 and ref.components == {1: 1, 2: 1, 3: 1}
    assert check_plausible(open_base, None, ref) is None  # no worse than its source
    wider = open_base.copy()
    rows, cols = np.nonzero(open_base == 2)
    wider[rows.max() - 6:rows.max() + 1][wider[rows.max() - 6:rows.max() + 1] == 2] = 0
    assert check_plausible(wider, None, ref) == "cavity_open"  # the deformation opened it more
    stats = DeformStats()
    made = deformed_variant(open_base, AugmentConfig(), None, 0, 0, 1, stats)
    assert made is not None and stats.accepted == 1


def test_heart_moved_out_of_the_real_field_is_rejected(masks, ranges):
    assert ranges.support is not None and ranges.support.shape == masks[0].shape
    m = masks[0]
    assert check_plausible(m, ranges) is None
    # shifted towards a corner no real mask reaches: the generator would draw it outside the fan
    rows, cols = np.nonzero(m)
    shifted = np.zeros_like(m)
    dr, dc = -rows.min(), m.shape[1] - 1 - cols.max()
    shifted[rows + dr, cols + dc] = m[rows, cols]
    outside = np.count_nonzero((shifted > 0) & ~ranges.support)
    assert outside > 0.01 * np.count_nonzero(shifted)
    assert check_plausible(shifted, ranges) == "outside_field"
