"""The synthetic six-site twin: real geometry and naming, shifts that scale from identical sites, no inversion."""

from dataclasses import astuple

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from data_prep.multisite_prostate import find_cases, split_cases
from data_prep.synthetic.multisite_prostate import (
    MATRIX,
    NEUTRAL,
    PROFILES,
    SITES,
    generate,
    site_profile,
    synth_volume,
)


def test_shift_strength_zero_makes_every_site_the_neutral_site():
    profiles = {site_profile(s, 0.0) for s in SITES}
    assert profiles == {NEUTRAL}
    # same random stream -> bit-identical volumes at every site: no site-specific statistic is left
    first = synth_volume(np.random.default_rng(3), site_profile(SITES[0], 0.0), 48)
    for site in SITES[1:]:
        other = synth_volume(np.random.default_rng(3), site_profile(site, 0.0), 48)
        assert all(np.array_equal(a, b) for a, b in zip(first, other)), site


def test_shift_strength_scales_each_shift():
    for site in SITES:
        assert site_profile(site, 1.0) == PROFILES[site]
    # additive fields move linearly, multiplicative ones geometrically
    half, full = site_profile("BIDMC", 0.5), PROFILES["BIDMC"]
    assert half.erc == pytest.approx(NEUTRAL.erc + 0.5 * (full.erc - NEUTRAL.erc))
    assert half.spacing_mm == pytest.approx(np.sqrt(NEUTRAL.spacing_mm * full.spacing_mm))
    assert site_profile("BIDMC", 2.0).erc > full.erc
    assert len({astuple(site_profile(s, 1.0)) for s in SITES}) == len(SITES)
    with pytest.raises(ValueError, match="shift_strength must be >= 0, got -1"):
        site_profile("HK", -1)
    with pytest.raises(ValueError, match="site must be one of"):
        site_profile("RUNMC")


def test_real_geometry_and_naming(tmp_path):
    raw = generate(tmp_path / "raw", n_cases=3, sites=("HK", "ISBI_1.5"))
    assert sorted(p.name for p in (raw / "ISBI_1.5").iterdir()) == [
        "Case00.nii.gz", "Case00_segmentation.nii.gz", "Case01.nii.gz", "Case01_segmentation.nii.gz",
        "Case02.nii.gz", "Case02_segmentation.nii.gz"]
    assert (raw / "HK" / "Case38.nii.gz").is_file()  # HK's real ids start at 38
    img = nib.load(raw / "HK" / "Case38.nii.gz")
    seg = nib.load(raw / "HK" / "Case38_segmentation.nii.gz")
    assert img.shape[:2] == (MATRIX, MATRIX) == (384, 384) and img.shape == seg.shape
    assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
    assert np.allclose(np.diag(img.affine)[:3], [0.625, 0.625, 3.6])  # HK: 0.625 mm in-plane, 3.6 mm slices
    assert set(find_cases(raw, ("HK", "ISBI_1.5"))) == {"HK", "ISBI_1.5"}


def test_reference_split_lists_are_reproduced_at_the_real_case_counts():
    from data_prep.synthetic.multisite_prostate import REAL_CASE_IDS

    assert len(REAL_CASE_IDS["ISBI_1.5"]) == 30 and REAL_CASE_IDS["ISBI_1.5"][0] == "Case00"
    split = split_cases("BIDMC", REAL_CASE_IDS["BIDMC"])
    assert split["validation"] == ["Case07", "Case09"]


def test_fixed_test_count_split():
    ids = [f"Case{i:02d}" for i in range(8)]
    split = split_cases("HK", ids, seed=1, n_test=4)
    assert len(split["testing"]) == 4 and len(split["validation"]) >= 1 and len(split["training"]) >= 1
    assert sorted(sum(split.values(), [])) == ids
    assert split == split_cases("HK", ids, seed=1, n_test=4)


def _contrast(image, label):
    g = label.astype(bool)
    ring = binary_dilation(g, np.ones((3, 3, 1), bool), iterations=3) & ~g
    return image[g].mean() / image[ring].mean()


@pytest.mark.parametrize("strength", [1.0, 2.0])
def test_no_site_inverts_the_gland_contrast(strength):
    for site in SITES:
        image, label, _ = synth_volume(np.random.default_rng(0), site_profile(site, strength), 96)
        assert _contrast(image, label) > 1.1, site


def test_within_site_variability():
    rng = np.random.default_rng(0)
    cases = [synth_volume(rng, PROFILES["UCL"], 64) for _ in range(3)]
    volumes = [label.sum() * np.prod(np.diag(affine)[:3]) for _, label, affine in cases]
    centres = [np.argwhere(label).mean(0)[:2] for _, label, _ in cases]
    assert max(volumes) / min(volumes) > 1.1  # gland sizes differ between patients
    assert max(np.abs(c - centres[0]).max() for c in centres) > 0.5  # and so do positions
    image = cases[0][0]
    middle = image[:, :, image.shape[2] // 2].astype(float)
    # partial-volume edges: intensities between tissue classes exist, not just a few plateaus
    assert len(np.unique(middle)) > 200


def test_endorectal_coil_sites_have_a_near_field_peak():
    def peak_ratio(site):
        image, _, _ = synth_volume(np.random.default_rng(1), PROFILES[site], 96)
        mid = image[:, :, image.shape[2] // 2].astype(float)
        return np.percentile(mid, 99.5) / np.median(mid[mid > 0.2 * mid.max()])

    assert PROFILES["BIDMC"].erc > 0 and PROFILES["ISBI"].erc == 0
    assert peak_ratio("BIDMC") > peak_ratio("ISBI")


def test_generate_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="n_cases must be >= 3"):
        generate(tmp_path / "a", n_cases={"HK": 2}, sites=("HK",))
    with pytest.raises(ValueError, match="sites must be among"):
        generate(tmp_path / "b", sites=("RUNMC",))
    with pytest.raises(ValueError, match="matrix must be >= 16, got 8"):
        generate(tmp_path / "c", sites=("HK",), matrix=8)
    assert not (tmp_path / "a").exists()
