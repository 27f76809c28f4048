"""Cardiac preprocessing helpers against hand-computed values and MONAI's own resampling."""

import numpy as np
import pytest

from data_prep.cardiac_common import (
    ACDC_TO_TARGET,
    MNMS_TO_TARGET,
    TARGET_SPACING,
    check_image_label_pair,
    clip_and_rescale,
    remap_labels,
    resample_in_plane,
)
from data_prep.common import DataValidationError


def test_acdc_remap_swaps_rv_and_lv():
    raw = np.array([[0, 1], [2, 3]])  # ACDC: 1 RV, 2 MYO, 3 LV
    np.testing.assert_array_equal(remap_labels(raw, ACDC_TO_TARGET), [[0, 3], [2, 1]])
    np.testing.assert_array_equal(remap_labels(raw, MNMS_TO_TARGET), raw)


@pytest.mark.parametrize("bad", [np.array([0, 4]), np.array([0, -1]), np.array([0.0, 1.5])])
def test_remap_rejects_values_outside_the_set(bad):
    with pytest.raises(DataValidationError, match="gt.nii.gz"):
        remap_labels(bad, ACDC_TO_TARGET, "x_gt.nii.gz")


def test_clip_and_rescale_matches_hand_computed_percentiles():
    image = np.arange(101, dtype=np.float32)  # 2nd percentile = 2, 98th = 98
    out = clip_and_rescale(image)
    assert out.dtype == np.float32
    assert out[0] == 0.0 and out[2] == 0.0 and out[100] == 1.0 and out[98] == 1.0
    assert out[50] == pytest.approx(48 / 96)
    np.testing.assert_array_equal(clip_and_rescale(np.full((3, 3), 7.0)), 0.0)


def test_resample_linear_ramp_lands_on_exact_positions():
    aff = np.diag([2.0, 1.0, 8.0, 1.0])
    aff[:3, 3] = [10.0, -5.0, 3.0]
    x = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 10, 2), np.float32)
    img, lab, new_aff = resample_in_plane(x, np.zeros(x.shape, np.uint8), aff, spacing=0.5)
    assert img.shape == lab.shape == (80, 20, 2)
    # output voxel i sits at input coordinate i * 0.5 / 2.0 (clamped at the far edge)
    np.testing.assert_allclose(img[:77, 3, 1], np.arange(77) * 0.25, atol=1e-5)
    np.testing.assert_allclose(np.diag(new_aff)[:3], [0.5, 0.5, 8.0])
    np.testing.assert_allclose(new_aff[:3, 3], aff[:3, 3])


def test_resample_agrees_with_monai_spacing():
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    rng = np.random.default_rng(0)
    aff = np.diag([1.5625, 1.8, 10.0, 1.0])
    aff[:3, 3] = [-50.0, -60.0, 20.0]
    image = rng.random((40, 36, 3)).astype(np.float32)
    label = rng.integers(0, 4, (40, 36, 3)).astype(np.uint8)
    img, lab, new_aff = resample_in_plane(image, label, aff)
    pixdim = (TARGET_SPACING, TARGET_SPACING, -1)
    ref = Spacing(pixdim=pixdim, mode="bilinear", padding_mode="border")(
        MetaTensor(torch.as_tensor(image)[None], affine=torch.as_tensor(aff)))
    ref_lab = Spacing(pixdim=pixdim, mode="nearest")(
        MetaTensor(torch.as_tensor(label, dtype=torch.float32)[None], affine=torch.as_tensor(aff)))
    assert tuple(ref.shape[1:]) == img.shape
    np.testing.assert_allclose(img, ref[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(new_aff, ref.affine.numpy(), atol=1e-5)
    # nearest-neighbour ties (input coordinate exactly x.5) may round either way; elsewhere they must agree
    coords = [np.arange(n) * TARGET_SPACING / s for n, s in zip(img.shape[:2], (1.5625, 1.8))]
    tie = [np.isclose(c % 1, 0.5) for c in coords]
    clear = ~(tie[0][:, None] | tie[1][None, :])
    np.testing.assert_array_equal(lab[clear], ref_lab[0].numpy().astype(np.uint8)[clear])


def test_pair_checks_name_files_and_values():
    with pytest.raises(DataValidationError, match=r"shape: image 'a.nii.gz' \(2, 2, 2\) and label 'b.nii.gz'"):
        check_image_label_pair((2, 2, 2), (2, 3, 2), (1, 1, 1), (1, 1, 1), "a.nii.gz", "b.nii.gz", ndim=3)
    with pytest.raises(DataValidationError, match="spacing:.*1.5"):
        check_image_label_pair((2, 2, 2), (2, 2, 2), (1, 1, 1), (1.5, 1, 1), "a.nii.gz", "b.nii.gz", ndim=3)
    with pytest.raises(DataValidationError, match="must be 4-D"):
        check_image_label_pair((2, 2, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1), "a.nii.gz", "b.nii.gz", ndim=4)
