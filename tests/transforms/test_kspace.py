"""k-space operations: centred orthonormal FFT against numpy, zero-filled input, normalisation round trips."""

import numpy as np
import pytest
import torch

from src.transforms.kspace import (
    apply_mask,
    center_crop,
    denormalize,
    fft2c,
    ifft2c,
    make_reconstruction_pair,
    normalize,
    normalize_instance,
    simulate_kspace,
    zero_filled_reconstruction,
)


def _np_fft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _np_ifft2c(k: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)


def _random_complex(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


@pytest.mark.parametrize("shape", [(8, 8), (2, 3, 10, 12), (7, 9), (1, 5, 6)])
def test_fft2c_and_ifft2c_match_numpy(shape):
    x = _random_complex(shape)
    k = fft2c(torch.from_numpy(x))
    np.testing.assert_allclose(k.numpy(), _np_fft2c(x), atol=1e-12)
    np.testing.assert_allclose(ifft2c(torch.from_numpy(x)).numpy(), _np_ifft2c(x), atol=1e-12)


def test_round_trip_and_parseval():
    x = torch.from_numpy(_random_complex((3, 16, 20), seed=1))
    k = fft2c(x)
    torch.testing.assert_close(ifft2c(k), x, atol=1e-12, rtol=0)
    torch.testing.assert_close((k.abs() ** 2).sum(), (x.abs() ** 2).sum())


def test_real_input_is_promoted_and_dc_is_centred():
    image = torch.ones(6, 8, dtype=torch.float32)
    k = fft2c(image)
    assert k.dtype == torch.complex64
    expected = torch.zeros(6, 8, dtype=torch.complex64)
    expected[3, 4] = np.sqrt(48.0)  # orthonormal: sum / sqrt(N)
    torch.testing.assert_close(k, expected, atol=1e-5, rtol=0)


def test_zero_filled_reconstruction_against_numpy_and_full_mask():
    x = _random_complex((2, 12, 12), seed=2)
    k = torch.from_numpy(_np_fft2c(x))
    mask = torch.zeros(12, 12, dtype=torch.float64)
    mask[:, ::3] = 1
    expected = np.abs(_np_ifft2c(k.numpy() * mask.numpy()))
    np.testing.assert_allclose(zero_filled_reconstruction(k, mask).numpy(), expected, atol=1e-12)
    full = zero_filled_reconstruction(k, torch.ones(12, 12, dtype=torch.float64))
    np.testing.assert_allclose(full.numpy(), np.abs(x), atol=1e-12)
    assert torch.count_nonzero(apply_mask(k, mask)[:, :, 1]) == 0


def test_normalize_instance_and_round_trip():
    image = torch.rand(4, 10, 10, dtype=torch.float64) * 7 + 3
    normed, mean, std = normalize_instance(image)
    assert mean.shape == (4, 1, 1) and std.shape == (4, 1, 1)
    torch.testing.assert_close(normed.mean(dim=(-2, -1)), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(normed.std(dim=(-2, -1)), torch.ones(4, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(denormalize(normed, mean, std), image)
    torch.testing.assert_close(denormalize(normalize(image, 2.0, 0.5), 2.0, 0.5), image)


def test_reconstruction_pair_uses_input_statistics_for_target():
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((2, 16, 16)))
    k = simulate_kspace(image)
    mask = torch.zeros(16, 16, dtype=torch.float64)
    mask[:, 6:10] = 1
    mask[:, ::4] = 1
    pair = make_reconstruction_pair(k, mask)
    zero_filled = zero_filled_reconstruction(k, mask)
    torch.testing.assert_close(pair.mean, zero_filled.mean(dim=(-2, -1), keepdim=True))
    torch.testing.assert_close(pair.std, zero_filled.std(dim=(-2, -1), keepdim=True))
    torch.testing.assert_close(denormalize(pair.target, pair.mean, pair.std), image, atol=1e-10, rtol=0)
    torch.testing.assert_close(denormalize(pair.input, pair.mean, pair.std), zero_filled, atol=1e-10, rtol=0)


def test_reconstruction_pair_crop_given_target_and_clamp():
    k = torch.from_numpy(_np_fft2c(_random_complex((1, 20, 14), seed=4)))
    mask = torch.ones(20, 14)
    target = torch.rand(1, 10, 10, dtype=torch.float64)
    pair = make_reconstruction_pair(k, mask, crop_size=(10, 10), target=target)
    assert pair.input.shape == (1, 10, 10)
    torch.testing.assert_close(denormalize(pair.target, pair.mean, pair.std), target)
    cropped = center_crop(ifft2c(k).abs(), (10, 10))
    computed = make_reconstruction_pair(k, mask, crop_size=(10, 10))
    torch.testing.assert_close(denormalize(computed.target, computed.mean, computed.std), cropped)
    clamped = make_reconstruction_pair(k, mask, crop_size=(10, 10), target=target * 1e6, clamp=6.0)
    assert clamped.target.max() == 6.0


def test_center_crop_follows_fastmri_offsets():
    x = torch.arange(36.0).reshape(6, 6)
    torch.testing.assert_close(center_crop(x, (3, 2)), x[1:4, 2:4])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: fft2c(torch.ones(4, 4, dtype=torch.int64)), TypeError, "image.*int64"),
        (lambda: fft2c(torch.ones(4)), ValueError, "image.*at least 2 dims"),
        (lambda: fft2c([[1.0]]), TypeError, "image must be a torch.Tensor"),
        (lambda: ifft2c(torch.tensor([[1.0, float("nan")]])), ValueError, "kspace contains NaN"),
        (lambda: apply_mask(torch.ones(4, 4), torch.ones(4, 5)), ValueError, r"mask spatial shape \(4, 5\)"),
        (lambda: apply_mask(torch.ones(4, 4), torch.full((4, 4), 0.5)), ValueError, "only 0 and 1, got value 0.5"),
        (lambda: apply_mask(torch.ones(4, 4), torch.ones(4, 4, dtype=torch.complex64)), TypeError, "mask must be real"),
        (lambda: center_crop(torch.ones(4, 4), (5, 2)), ValueError, r"size must fit.*\(5, 2\)"),
        (lambda: normalize_instance(torch.ones(3, 3, dtype=torch.complex64)), TypeError, "image must be real"),
        (lambda: normalize(torch.ones(3, 3), 0.0, float("nan")), ValueError, "std must be finite"),
        (lambda: denormalize(torch.ones(3, 3), 0.0, -1.0), ValueError, "std must be non-negative"),
        (
            lambda: make_reconstruction_pair(torch.ones(4, 4, dtype=torch.complex64), torch.ones(4, 4), clamp=-1.0),
            ValueError,
            "clamp must be positive or None, got -1.0",
        ),
        (
            lambda: make_reconstruction_pair(torch.ones(4, 4), torch.ones(4, 4), target=torch.ones(3, 3)),
            ValueError,
            r"target shape \(3, 3\)",
        ),
    ],
)
def test_bad_input_is_rejected_with_the_value(call, error, match):
    with pytest.raises(error, match=match):
        call()
