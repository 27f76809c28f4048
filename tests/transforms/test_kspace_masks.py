"""Fixed per-site sampling masks: acceleration and centre within the stated tolerances, determinism, bad input."""

import math

import numpy as np
import pytest
import torch
from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask

from src.transforms.kspace_masks import (
    ACCELERATION_RTOL,
    CENTER_FRACTION_ATOL,
    FEDMRI_SITE_MASKS,
    MASK_TYPES,
    make_mask,
    measure_acceleration,
    measure_center_fraction,
    site_mask,
)

CASES = [("equispaced", 3.0, 0.08), ("equispaced", 4.0, 0.08), ("random", 5.0, 0.08), ("random", 8.0, 0.04)]
CASES += [("radial", 4.0, 0.04), ("radial", 8.0, 0.04), ("random2d", 6.0, 0.08), ("random2d", 4.0, 0.1)]


@pytest.mark.parametrize("size", [96, 192, 240, 320])
@pytest.mark.parametrize("mask_type, acceleration, center_fraction", CASES)
def test_measured_acceleration_and_center(mask_type, acceleration, center_fraction, size):
    mask = make_mask(mask_type, (size, size), acceleration, center_fraction, seed=7)
    assert mask.dtype == torch.float32 and mask.shape == (size, size)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    measured = measure_acceleration(mask)
    assert abs(measured - acceleration) / acceleration <= ACCELERATION_RTOL[mask_type], measured
    requested_center = round(size * center_fraction) / size
    center = measure_center_fraction(mask)
    assert center >= requested_center
    if mask_type != "radial":
        assert center <= requested_center + CENTER_FRACTION_ATOL, center


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_same_seed_same_mask_and_1d_masks_are_columns(mask_type):
    a = make_mask(mask_type, (96, 80), 4.0, 0.08, seed=3)
    torch.testing.assert_close(a, make_mask(mask_type, (96, 80), 4.0, 0.08, seed=3))
    rows_identical = bool((a == a[0:1]).all())
    assert rows_identical == (mask_type in ("equispaced", "random"))


@pytest.mark.parametrize("mask_type", ["random", "radial", "random2d"])
def test_different_seed_different_mask(mask_type):
    assert not torch.equal(make_mask(mask_type, (64, 64), 4.0, 0.08, 0), make_mask(mask_type, (64, 64), 4.0, 0.08, 1))


def test_equispaced_is_monai_mask():
    maker = EquispacedKspaceMask([0.08], [4.0], spatial_dims=2, is_complex=True)
    maker.set_random_state(seed=11)
    maker(torch.zeros(1, 4, 240, 2))
    expected = maker.mask.reshape(240)
    mask = make_mask("equispaced", (50, 240), 4.0, 0.08, seed=11)
    torch.testing.assert_close(mask, expected.expand(50, 240).float())


def test_random_1d_has_exact_column_count():
    for seed in range(5):
        mask = make_mask("random", (16, 320), 5.0, 0.08, seed=seed)
        assert int(mask[0].sum()) == 64


def test_radial_spokes_pass_through_centre():
    mask = make_mask("radial", (128, 128), 6.0, 0.02, seed=0)
    # every ring around the DC point is hit by spokes in roughly opposite directions (point symmetry)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    far = ((ys - 64) ** 2 + (xs - 64) ** 2) > 40**2
    assert far.sum() > 0
    mirrored = mask[(128 - ys[far]).clamp(max=127), (128 - xs[far]).clamp(max=127)]
    assert mirrored.mean() > 0.6


def test_measure_center_fraction_on_hand_built_masks():
    cols = torch.zeros(4, 10)
    cols[:, 4:7] = 1  # run 4..6 contains centre column 5
    cols[:, 0] = 1
    assert measure_center_fraction(cols) == pytest.approx(0.3)
    block = torch.zeros(10, 10)
    block[4:6, 4:6] = 1
    block[0, 0] = 1
    assert measure_center_fraction(block) == pytest.approx(0.2)
    assert measure_acceleration(block) == pytest.approx(20.0)
    assert measure_center_fraction(torch.zeros(6, 6)) == 0.0


def test_site_masks_for_the_papers_four_sites():
    assert [s.mask_type for s in FEDMRI_SITE_MASKS] == ["equispaced", "random", "radial", "random2d"]
    for index, size in enumerate((320, 240, 192, 240)):
        mask = site_mask(index, (size, size))
        spec = FEDMRI_SITE_MASKS[index]
        assert math.isclose(measure_acceleration(mask), spec.acceleration, rel_tol=ACCELERATION_RTOL[spec.mask_type])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: make_mask("spiral", (32, 32), 4.0, 0.08, 0), ValueError, "mask_type must be one of.*'spiral'"),
        (lambda: make_mask("random", (32, 32, 2), 4.0, 0.08, 0), ValueError, r"shape.*\(32, 32, 2\)"),
        (lambda: make_mask("random", (4, 32), 4.0, 0.08, 0), ValueError, r"shape.*\(4, 32\)"),
        (lambda: make_mask("random", (32, 32), 1.0, 0.08, 0), ValueError, "acceleration.*got 1.0"),
        (lambda: make_mask("random", (32, 32), float("nan"), 0.08, 0), ValueError, "acceleration.*got nan"),
        (lambda: make_mask("random", (32, 32), 8.0, 0.2, 0), ValueError, "center_fraction.*got 0.2"),
        (lambda: make_mask("radial", (32, 32), 4.0, 0.08, -1), ValueError, "seed.*got -1"),
        (lambda: site_mask(4, (32, 32)), IndexError, r"site_index must be in \[0, 3\], got 4"),
        (lambda: site_mask(-1, (32, 32)), IndexError, "got -1"),
        (lambda: site_mask(1.0, (32, 32)), TypeError, "site_index must be an int, got 1.0"),
        (lambda: measure_acceleration(torch.zeros(4, 4)), ValueError, "samples no k-space point"),
        (lambda: measure_acceleration(torch.ones(2, 4, 4)), ValueError, r"\(2, 4, 4\)"),
        (lambda: measure_center_fraction(torch.full((4, 4), 2.0)), ValueError, "only 0 and 1"),
    ],
)
def test_bad_input_is_rejected_with_the_value(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_numpy_integer_shape_is_accepted():
    mask = make_mask("random2d", (np.int64(32), np.int64(32)), 4.0, 0.1, seed=np.int64(2))
    assert mask.shape == (32, 32)
