import numpy as np
import pytest

from src.metrics.slice_volume import dice_2d_reference, score_slices, volume_scores


def _square(n=3):
    g = np.zeros((n, 8, 8), np.uint8)
    g[:, 2:6, 2:6] = 1
    return g


def test_volume_dice_and_hd95_hand_computed():
    g = _square()
    p = g.copy()
    p[:, 2:6, 2] = 0  # one column removed per slice: 12 of 16 pixels
    dice, hd = volume_scores(np.moveaxis(p, 0, -1), np.moveaxis(g, 0, -1))
    assert dice == pytest.approx(2 * 36 / (36 + 48))
    assert hd == pytest.approx(1.0)


def test_empty_prediction_gets_the_diagonal():
    g = np.moveaxis(_square(), 0, -1)
    dice, hd = volume_scores(np.zeros_like(g), g)
    assert dice == 0.0 and hd == pytest.approx(np.sqrt(8 * 8 + 8 * 8 + 3 * 3))


def test_reference_2d_dice_includes_background():
    g = _square(1)
    # perfect prediction: both classes 1 (up to smoothing)
    assert dice_2d_reference(g, g) == pytest.approx(1.0, abs=1e-6)
    # all background predicted: bg dice 2*48/(64+48), fg dice 0
    assert dice_2d_reference(np.zeros_like(g), g) == pytest.approx((2 * 48 / 112) / 2, abs=1e-6)


def test_slices_regrouped_by_case_and_order():
    g = _square(4)
    p = g.copy()
    p[3] = 0  # case b's second slice is missed entirely
    out = score_slices(p, g, ["a", "a", "b", "b"], [0, 1, 1, 0], prefix="test")
    # case a perfect; case b: one of two slices predicted -> 2*16/(16+32)
    assert out["test_dice"] == pytest.approx((1.0 + 2 * 16 / 48) / 2)
    assert set(out) == {"test_dice", "test_hd95", "test_dice2d"}


def test_length_mismatch():
    g = _square(2)
    with pytest.raises(ValueError, match="need as many"):
        score_slices(g, g, ["a"], [0, 1])


def test_per_volume_scores_are_each_volumes_own_and_average_to_the_mean():
    g = _square(4)
    p = g.copy()
    p[3] = 0  # case b's slice 0 (listed last) is missed
    out = score_slices(p, g, ["a", "a", "b", "b"], [0, 1, 1, 0], prefix="test", per_volume=True)
    vols = out["volumes"]
    assert set(vols) == {"a", "b"}
    assert vols["a"]["dice"] == pytest.approx(1.0) and vols["b"]["dice"] == pytest.approx(2 * 16 / 48)
    assert vols["a"]["hd95"] == pytest.approx(0.0)
    # case b's 2-D reference score: slice 1 perfect (~1), slice 0 bg-only 2*48/112 and fg 0
    assert vols["b"]["dice2d"] == pytest.approx((1.0 + (2 * 48 / 112) / 2) / 2, abs=1e-6)
    assert out["test_dice"] == pytest.approx(np.mean([v["dice"] for v in vols.values()]))
    assert "volumes" not in score_slices(p, g, ["a", "a", "b", "b"], [0, 1, 1, 0])
