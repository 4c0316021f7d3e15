"""Evaluation metrics on hand-made masks and feature sets with known answers."""

import math

import numpy as np
import pytest

from cardigan.core.labels import STRUCTURES
from cardigan.evaluate import features, metrics

STRUCTS = list(STRUCTURES)


def _labels(n=1, size=24):
    return np.zeros((n, size, size), np.uint8)


def test_structures_compose_labels():
    lab = np.array([[[0, 1, 2, 3]]], np.uint8)
    m = metrics.structure_masks(lab)
    assert m.shape == (1, 3, 1, 4)
    np.testing.assert_array_equal(m[0, STRUCTS.index("LV_endo"), 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(m[0, STRUCTS.index("LV_epi"), 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(m[0, STRUCTS.index("LA"), 0], [0, 0, 0, 1])


def test_dice_of_overlapping_squares_and_epi_union():
    gt, pred = _labels(), _labels()
    gt[0, 4:8, 4:8] = 1  # 16 px cavity
    pred[0, 4:8, 6:10] = 1  # 16 px, 8 px overlap
    gt[0, 4:8, 8:10] = 2  # myocardium: epi = rows 4:8, cols 4:10 (24 px)
    pred[0, 4:8, 10:12] = 2  # epi = rows 4:8, cols 6:12 (24 px), overlap cols 6:10 (16 px)
    r = metrics.dice_hd95(pred, gt, [(1.0, 1.0)])
    assert r["LV_endo"]["dice"][0] == pytest.approx(2 * 8 / 32)
    assert r["LV_epi"]["dice"][0] == pytest.approx(2 * 16 / 48)


@pytest.mark.parametrize("k", [1, 3])
def test_hd95_in_mm_with_anisotropic_spacing(k):
    sr, sc = 0.7, 1.9  # row and column spacing differ: the axis of the shift must matter
    gt, pred = _labels(2), _labels(2)
    gt[0, 3:20, 5] = 3  # vertical line, predicted k columns to the right
    pred[0, 3:20, 5 + k] = 3
    gt[1, 5, 3:20] = 3  # horizontal line, predicted k rows lower
    pred[1, 5 + k, 3:20] = 3
    r = metrics.dice_hd95(pred, gt, [(sr, sc), (sr, sc)])
    np.testing.assert_allclose(r["LA"]["hd95"], [k * sc, k * sr], rtol=1e-6)
    assert np.isnan(r["LV_endo"]["hd95"]).all()  # both empty: undefined
    np.testing.assert_array_equal(r["LV_endo"]["dice"], [1.0, 1.0])  # both empty: agree


def test_hd95_of_single_pixels_is_their_distance_in_mm():
    gt, pred = _labels(), _labels()
    gt[0, 2, 2] = 1
    pred[0, 5, 6] = 1
    r = metrics.dice_hd95(pred, gt, [(2.0, 0.5)])
    assert r["LV_endo"]["hd95"][0] == pytest.approx(math.hypot(3 * 2.0, 4 * 0.5))
    assert r["LV_endo"]["dice"][0] == 0.0


def test_empty_prediction_counts_and_does_not_crash():
    gt, pred = _labels(2), _labels(2)
    gt[:, 4:10, 4:10] = 1
    pred[1, 4:10, 4:10] = 1
    r = metrics.dice_hd95(pred, gt, [(1.0, 1.0)] * 2)["LV_endo"]
    np.testing.assert_array_equal(r["dice"], [0.0, 1.0])
    assert np.isnan(r["hd95"][0]) and r["hd95"][1] == 0.0
    np.testing.assert_array_equal(r["empty_pred"], [True, False])
    assert metrics.summarise(r["hd95"]) == (0.0, 0.0, 1)
    mean, std, n = metrics.summarise(r["dice"])
    assert (mean, n) == (0.5, 2) and std == pytest.approx(math.sqrt(0.5))
    m, s, n = metrics.summarise(np.array([np.nan, np.inf]))
    assert math.isnan(m) and math.isnan(s) and n == 0


def test_outside_counts_only_what_lies_beyond_the_margin_in_mm():
    """A chamber taken for the LA far away counts, a boundary error near it does not."""
    gt, pred = _labels(2, size=40), _labels(2, size=40)
    gt[:, 10:20, 10:20] = 3  # 100 px atrium
    pred[:, 9:21, 9:21] = 3  # one pixel too wide all round: within the margin
    pred[1, 30:35, 30:35] = 3  # plus a 25 px blob far away (another chamber)
    r = metrics.dice_hd95(pred, gt, [(1.0, 1.0)] * 2)["LA"]
    np.testing.assert_allclose(r["outside"], [0.0, 0.25])
    assert np.isnan(metrics.dice_hd95(pred, gt, [(1.0, 1.0)] * 2)["LV_endo"]["outside"]).all()
    # the margin is in mm: 12 columns away is 12 mm at 1 mm per column, 3 mm at 0.25
    gt2, pred2 = _labels(1, size=40), _labels(1, size=40)
    gt2[0, 10:20, 10:20] = 3
    pred2[0, 10:20, 31:32] = 3  # 12 columns right of the atrium's last column
    coarse = metrics.dice_hd95(pred2, gt2, [(1.0, 1.0)])["LA"]["outside"][0]
    fine = metrics.dice_hd95(pred2, gt2, [(1.0, 0.25)])["LA"]["outside"][0]
    assert coarse == pytest.approx(0.10) and fine == 0.0


def test_dice_hd95_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="spacing"):
        metrics.dice_hd95(_labels(2), _labels(2), [(1.0, 1.0)])
    with pytest.raises(ValueError, match="must be equal"):
        metrics.dice_hd95(_labels(1), _labels(2), [(1.0, 1.0)])


def test_frechet_distance_identical_is_zero_and_shift_is_squared_norm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    assert features.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0, 0, 0.5, 0])
    # Same covariance, means differ by `shift`: FD = |shift|^2.
    assert features.frechet_distance(a + shift, a) == pytest.approx(float(shift @ shift), rel=1e-6)


@pytest.mark.parametrize("n_a,n_b,d", [(200, 150, 6), (40, 30, 10)])
def test_frechet_distance_equals_monai_fidmetric(n_a, n_b, d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n_a, d)) @ rng.normal(size=(d, d))
    b = rng.normal(loc=0.3, size=(n_b, d)) * 1.5
    assert features.frechet_distance(a, b) == pytest.approx(features.frechet_distance_monai(a, b), rel=1e-6)


def test_frechet_distance_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(8, 2048))
    assert features.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert features.frechet_distance(a, rng.normal(size=(6, 2048))) > 0


def test_kid_near_zero_for_same_distribution_and_large_for_different():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    mean_same, std_same, m = features.kid(a, b, n_subsets=20, subset_size=100, seed=0)
    mean_diff, _, _ = features.kid(a, b + 1.5, n_subsets=20, subset_size=100, seed=0)
    assert m == 100
    assert abs(mean_same) < 0.05 and std_same > 0
    assert mean_diff > 20 * abs(mean_same) and mean_diff > 0.5
    assert features.kid(a, b, n_subsets=5, seed=3) == features.kid(a, b, n_subsets=5, seed=3)


def test_kid_is_unbiased_mmd_with_cubic_kernel():
    x = np.array([[0.0, 1.0], [1.0, 0.0]])
    y = np.array([[1.0, 1.0], [2.0, 0.0]])

    def k(u, v):
        return (u @ v / 2 + 1) ** 3

    expected = (2 * k(x[0], x[1]) / 2 + 2 * k(y[0], y[1]) / 2
                - 2 * np.mean([k(u, v) for u in x for v in y]))
    mean, std, m = features.kid(x, y, n_subsets=3)
    assert m == 2 and mean == pytest.approx(expected) and std == pytest.approx(0.0)


def test_distances_reject_bad_feature_sets():
    with pytest.raises(ValueError, match="same D"):
        features.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        features.kid(np.zeros((1, 3)), np.zeros((4, 3)))
