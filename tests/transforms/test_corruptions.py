import numpy as np
import pytest
import torch

from src.transforms.corruptions import CORRUPTIONS, SEVERITIES, corrupt, ghosting, motion


def _phantom(size: int = 64) -> np.ndarray:
    """(1, H, W) float32 disc-in-disc phantom in [0, 1] (a crude short-axis slice)."""
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    outer = (yy - c) ** 2 + (xx - c) ** 2 < (0.32 * size) ** 2
    inner = (yy - c - 2) ** 2 + (xx - c + 4) ** 2 < (0.12 * size) ** 2
    return (0.6 * outer + 0.4 * inner).astype(np.float32)[None]


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_suite_has_the_six_kinds():
    assert set(CORRUPTIONS) == {"bias_field", "spike", "ghosting", "motion", "gibbs", "rician_noise"}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_reproducible_by_seed_and_changes_the_image(kind):
    img = _phantom()
    a = corrupt(img, kind, 3, seed=5)
    b = corrupt(img, kind, 3, seed=5)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == img.shape
    assert np.array_equal(a, b)
    assert _rmse(a, img) > 1e-3
    assert np.array_equal(img, _phantom())  # input untouched
    if kind != "gibbs":  # Gibbs ringing has no random draw
        assert not np.array_equal(a, corrupt(img, kind, 3, seed=6))


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_artefact_grows_with_severity_for_a_fixed_seed(kind):
    img = _phantom()
    errors = [_rmse(corrupt(img, kind, s, seed=2), img) for s in SEVERITIES]
    assert all(e1 < e2 for e1, e2 in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_torch_and_3d_inputs(kind):
    vol = torch.from_numpy(np.repeat(_phantom(32)[..., None], 3, axis=-1))  # (1, 32, 32, 3)
    out = corrupt(vol, kind, 2, seed=0)
    assert type(out) is torch.Tensor and out.shape == vol.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, corrupt(vol, kind, 2, seed=0), rtol=0, atol=0)


def test_ghosting_matches_numpy_kspace_reference():
    img = _phantom(32)
    out = ghosting(torch.from_numpy(img), intensity=0.7, num_ghosts=4, axis=0, restore=0.0).numpy()
    k = np.fft.fftshift(np.fft.fft2(img[0]))
    rows = np.arange(32) % 4 == 0
    k[rows, :] *= 0.3
    expected = np.real(np.fft.ifft2(np.fft.ifftshift(k)))
    np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_ghosting_identity_and_restored_centre():
    img = torch.from_numpy(_phantom(32))
    torch.testing.assert_close(ghosting(img, 0.0, 4, axis=1), img, atol=1e-5, rtol=0)
    # with restore = 1 every line is restored: identity whatever the intensity
    torch.testing.assert_close(ghosting(img, 0.9, 4, axis=1, restore=1.0), img, atol=1e-5, rtol=0)


def test_motion_without_movement_is_identity_and_full_shift_is_a_shift():
    img = torch.from_numpy(_phantom(32))
    still = motion(img, [0.0], [(0.0, 0.0)], [0.5], axis=0)
    torch.testing.assert_close(still, img.abs(), atol=1e-5, rtol=0)
    # a pose taken from (almost) the start of the acquisition: the whole image is the moved object
    moved = motion(img, [0.0], [(0.0, 3.0)], [1e-6], axis=1)
    torch.testing.assert_close(moved[0, :, 3:], img[0, :, :-3], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "blur"}, ValueError, "kind must be one of .* got 'blur'"),
        ({"severity": 0}, ValueError, r"severity must be one of \(1, 2, 3, 4, 5\), got 0"),
        ({"severity": 2.5}, ValueError, "got 2.5"),
        ({"seed": -1}, ValueError, "seed must be a non-negative int, got -1"),
        ({"image": np.zeros((32, 32), np.float32)}, ValueError, r"channel-first .* got shape \(32, 32\)"),
        ({"image": np.full((1, 8, 8), np.nan, np.float32)}, ValueError, "NaN"),
        ({"image": np.zeros((1, 8, 8), np.complex64)}, TypeError, "real numbers, got dtype torch.complex64"),
        ({"image": [[[0.0]]]}, TypeError, "numpy array or torch tensor, got list"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"image": _phantom(16), "kind": "spike", "severity": 1, "seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        corrupt(**args)


def test_bad_low_level_arguments():
    img = torch.from_numpy(_phantom(16))
    with pytest.raises(ValueError, match=r"intensity must be in \[0, 1\], got 1.5"):
        ghosting(img, 1.5, 4, 0)
    with pytest.raises(ValueError, match="num_ghosts must be an int >= 2, got 1"):
        ghosting(img, 0.5, 1, 0)
    with pytest.raises(ValueError, match="axis must be 0 \\(H\\) or 1 \\(W\\), got 2"):
        motion(img, [1.0], [(0.0, 0.0)], [0.5], axis=2)
    with pytest.raises(ValueError, match="times must be increasing values in \\(0, 1\\)"):
        motion(img, [1.0, 2.0], [(0.0, 0.0)] * 2, [0.7, 0.3], axis=0)


# ---- ACDC-C: the reference generator's magnitudes ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bias_field", "spike", "ghosting", "motion"])
def test_acdc_c_is_seeded_and_varies_with_the_seed(kind):
    from src.transforms.corruptions import acdc_c

    img = _phantom(32)
    a, b, c = acdc_c(img, kind, seed=1), acdc_c(img, kind, seed=1), acdc_c(img, kind, seed=2)
    assert np.array_equal(a, b) and not np.allclose(a, c) and not np.allclose(a, img)


def test_acdc_c_spike_is_one_to_three_times_the_spectrum_maximum():
    """The spike is set to r x max|k|, r ~ U(1, 3); the image keeps the real part, which splits it into two
    conjugate components of half that size: so the largest non-DC component lies in [0.5, 1.5] x max|k|."""
    from src.transforms.corruptions import acdc_c

    img = _phantom(32)
    peak = np.abs(np.fft.fftn(img[0])).max()
    clean = np.abs(np.fft.fftn(img[0])).ravel()[1:].max()
    for seed in range(4):
        spectrum = np.abs(np.fft.fftn(acdc_c(img, "spike", seed=seed)[0])).ravel()
        spike = spectrum[1:].max()  # index 0 is DC
        assert spike > 1.2 * clean and 0.49 * peak <= spike <= 1.51 * peak, (seed, spike / peak)


def test_ladder_top_is_the_reference_magnitude_and_acdc_c_ranges_are_the_reference():
    from src.transforms import corruptions as c

    assert c._MOTION_DEGREES[-1] == 30.0 and c._MOTION_MM[-1] == 10.0
    assert c._SPIKE_RATIO[-1] == 3.0 and c._GHOST_INTENSITY[0] == 0.5 and c._GHOST_INTENSITY[-1] == 1.0
    assert c._BIAS_COEFF[-1] == 0.5
    assert c.ACDC_C_RANGES["motion"] == {"degrees": 30.0, "translation_mm": 10.0, "num_transforms": 2}
    assert c.ACDC_C_RANGES["spike"]["intensity"] == (1.0, 3.0)
    assert c.ACDC_C_RANGES["ghosting"]["intensity"] == (0.5, 1.0)
    with pytest.raises(ValueError, match="kind must be one of .* got 'gibbs'"):
        c.acdc_c(_phantom(16), "gibbs")
