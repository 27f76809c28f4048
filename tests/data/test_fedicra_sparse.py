"""Invariants of each sparse annotation form, on synthetic FAZ / fundus masks and hand-made masks."""

import numpy as np
import pytest
from scipy import ndimage

from data_prep.synthetic.fedicra import FAZ_STYLES, ODOC_STYLES, faz_case, odoc_case
from data_prep.synthetic.sparse_annotations import (
    KEYPOINT_RADIUS,
    NOISY_MAX_SPILL,
    all_sparse_forms,
    block,
    block_boxes,
    box,
    keypoint,
    scribble,
    scribble_noisy,
)


def _masks():
    """(mask, num_classes) pairs: FAZ masks from every site style and fundus masks (cup, rim, background)."""
    rng = np.random.default_rng(7)
    out = [(faz_case(128, s, rng)[1], 2) for s in FAZ_STYLES]
    out += [(odoc_case(128, s, rng)[1], 3) for s in ODOC_STYLES]
    return out


MASKS = _masks()


def _present(mask, c):
    return [k for k in range(c) if (mask == k).any()]


@pytest.mark.parametrize("mask,c", MASKS)
def test_scribble_pixels_lie_in_the_region_they_label_and_are_thin(mask, c):
    lab = scribble(mask, c, np.random.default_rng(0))
    annotated = lab != c
    assert np.array_equal(lab[annotated], mask[annotated])
    assert sorted(np.unique(lab[annotated]).tolist()) == _present(mask, c)  # background scribbled too
    for k in _present(mask, c):
        assert not ndimage.binary_erosion(lab == k, np.ones((3, 3))).any()  # no 3x3 patch: a curve, not an area
        assert ndimage.label(lab == k, np.ones((3, 3)))[1] == 1  # one stroke per region
        assert (lab == k).sum() < 0.5 * (mask == k).sum()


@pytest.mark.parametrize("mask,c", MASKS)
def test_noisy_scribble_stays_near_its_class(mask, c):
    lab = scribble_noisy(mask, c, np.random.default_rng(1))
    annotated = lab != c
    assert annotated.any()
    for k in np.unique(lab[annotated]):
        dist_to_region = ndimage.distance_transform_edt(mask != k)
        assert dist_to_region[lab == k].max() <= NOISY_MAX_SPILL


def test_noisy_scribble_spills_over_boundaries_where_clean_one_does_not():
    wrong_noisy, wrong_clean = [], []
    for i, (mask, c) in enumerate(MASKS):
        noisy, clean = scribble_noisy(mask, c, np.random.default_rng(i)), scribble(mask, c, np.random.default_rng(i))
        wrong_noisy.append(np.mean(noisy[noisy != c] != mask[noisy != c]))
        wrong_clean.append(np.mean(clean[clean != c] != mask[clean != c]))
    assert max(wrong_clean) == 0.0
    assert np.mean(wrong_noisy) > 0.1  # annotator error is the point of this form
    assert np.mean(wrong_noisy) < 0.9  # ...but most of it is still right


@pytest.mark.parametrize("mask,c", MASKS)
def test_keypoints_are_few_small_discs_inside_their_region(mask, c):
    lab = keypoint(mask, c, np.random.default_rng(2))
    annotated = lab != c
    assert np.array_equal(lab[annotated], mask[annotated])
    disc_area = int(np.sum(np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2) <= KEYPOINT_RADIUS**2))
    for k in _present(mask, c):
        n_components = ndimage.label(lab == k)[1]
        assert 1 <= n_components <= 3
        assert (lab == k).sum() <= 3 * disc_area


@pytest.mark.parametrize("mask,c", MASKS)
def test_block_equals_mask_inside_the_blocks_only(mask, c):
    lab = block(mask, c, np.random.default_rng(3))
    inside = np.zeros(mask.shape, bool)
    for y0, y1, x0, x1 in block_boxes(mask, c, np.random.default_rng(3)):
        inside[y0:y1, x0:x1] = True
    assert np.array_equal(lab != c, inside)
    assert np.array_equal(lab[inside], mask[inside])
    assert sorted(np.unique(lab[inside]).tolist()) == _present(mask, c)


def test_box_on_a_hand_made_faz_mask():
    mask = np.zeros((40, 50), np.uint8)
    yy, xx = np.mgrid[0:40, 0:50]
    mask[(yy - 20) ** 2 / 64 + (xx - 25) ** 2 / 144 <= 1] = 1  # ellipse, bbox rows 12..28, cols 13..37
    lab = box(mask, 2, np.random.default_rng(0))
    assert np.all(lab[12:29, 13:38] == 1)
    ring = lab == 2
    ys, xs = np.nonzero(ring)
    margin = 12 - ys.min()
    assert 3 <= margin <= 8 and ys.max() == 28 + margin and xs.min() == 13 - margin and xs.max() == 37 + margin
    outside = np.ones_like(ring)
    outside[12 - margin : 29 + margin, 13 - margin : 38 + margin] = False
    assert np.all(lab[outside] == 0) and np.all(mask[outside] == 0)
    # inside the box the label equals the mask only on FAZ pixels: the corners are over-claimed
    in_box = np.zeros_like(ring)
    in_box[12:29, 13:38] = True
    assert np.array_equal(lab[in_box] == mask[in_box], mask[in_box] == 1)
    assert (mask[in_box] == 0).any()


@pytest.mark.parametrize("mask,c", [m for m in MASKS if m[1] == 3])
def test_fundus_box_nests_cup_box_in_disc_box(mask, c):
    lab = box(mask, c, np.random.default_rng(4))

    def bbox(region):
        ys, xs = np.nonzero(region)
        return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1

    dy0, dy1, dx0, dx1 = bbox(mask >= 1)
    cy0, cy1, cx0, cx1 = bbox(mask == 1)
    assert np.all(lab[cy0:cy1, cx0:cx1] == 1)
    disc_box = np.zeros(mask.shape, bool)
    disc_box[dy0:dy1, dx0:dx1] = True
    disc_box[cy0:cy1, cx0:cx1] = False
    assert np.all(lab[disc_box] == 2)
    assert np.array_equal(lab[disc_box] == mask[disc_box], mask[disc_box] == 2)
    known_bg = (lab == 0)
    assert known_bg.any() and np.all(mask[known_bg] == 0)
    assert np.all(lab[mask >= 1] != 0)  # no disc pixel is called background


def test_forms_are_deterministic_by_seed_and_use_the_ignore_value():
    mask, c = MASKS[-1]
    a = all_sparse_forms(mask, c, np.random.default_rng(5))
    b = all_sparse_forms(mask, c, np.random.default_rng(5))
    for name in a:
        assert a[name].dtype == np.uint8 and a[name].shape == mask.shape
        assert np.array_equal(a[name], b[name])
        if name != "box":
            assert (a[name] == c).mean() > 0.5  # sparse: mostly unannotated


def test_bad_mask_is_rejected_with_its_values():
    with pytest.raises(ValueError, match=r"mask values must lie in 0\.\.1, got \[0, 1, 2\]"):
        scribble(np.array([[0, 1], [2, 1]]), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="must be 2-D"):
        keypoint(np.zeros((2, 2, 2), np.uint8), 2, np.random.default_rng(0))
