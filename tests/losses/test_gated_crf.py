"""Gated CRF loss against a direct double loop over pixel pairs."""

import math

import pytest
import torch

from src.losses.gated_crf import GatedCRFLoss, gated_crf_loss


def _double_loop(probs, image, radius, sigma_xy, sigma_rgb):
    b, _, h, w = probs.shape
    total = 0.0
    for n in range(b):
        for yi in range(h):
            for xi in range(w):
                for yj in range(max(0, yi - radius), min(h, yi + radius + 1)):
                    for xj in range(max(0, xi - radius), min(w, xi + radius + 1)):
                        if (yi, xi) == (yj, xj):
                            continue
                        d_xy = (yi - yj) ** 2 + (xi - xj) ** 2
                        d_rgb = float(((image[n, :, yi, xi] - image[n, :, yj, xj]) ** 2).sum())
                        k = math.exp(-d_xy / (2 * sigma_xy**2) - d_rgb / (2 * sigma_rgb**2))
                        total += k * (1.0 - float((probs[n, :, yi, xi] * probs[n, :, yj, xj]).sum()))
    return total / (b * h * w)


@pytest.mark.parametrize("radius,shape,channels", [(2, (5, 6), 1), (5, (7, 8), 3), (5, (3, 12), 1)])
def test_matches_direct_double_loop(radius, shape, channels):
    torch.manual_seed(radius)
    probs = torch.softmax(torch.randn(2, 3, *shape, dtype=torch.float64), 1)
    image = torch.rand(2, channels, *shape, dtype=torch.float64)
    expected = _double_loop(probs, image, radius, 6.0, 0.5)
    assert gated_crf_loss(probs, image, radius, 6.0, 0.5).item() == pytest.approx(expected, rel=1e-12)


def test_default_kernel_matches_double_loop_and_module():
    torch.manual_seed(7)
    probs = torch.softmax(torch.randn(1, 2, 6, 6, dtype=torch.float64), 1)
    image = torch.rand(1, 1, 6, 6, dtype=torch.float64) * 0.2
    expected = _double_loop(probs, image, 5, 6.0, 0.1)
    assert GatedCRFLoss()(probs, image).item() == pytest.approx(expected, rel=1e-12)


def test_gradcheck_on_probabilities():
    torch.manual_seed(3)
    probs = torch.rand(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    image = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: gated_crf_loss(p, image, 2, 3.0, 0.5), (probs,))


def test_uniform_one_hot_prediction_has_zero_loss():
    probs = torch.zeros(1, 2, 6, 6)
    probs[:, 1] = 1.0
    assert gated_crf_loss(probs, torch.rand(1, 1, 6, 6)).item() == pytest.approx(0.0, abs=1e-7)


def test_bad_inputs():
    probs = torch.rand(1, 2, 4, 4)
    msg = r"image must match probs in batch and spatial size \(1, 4, 4\), got \(1, 4, 5\)"
    with pytest.raises(ValueError, match=msg):
        gated_crf_loss(probs, torch.rand(1, 1, 4, 5))
    with pytest.raises(ValueError, match="probs must be a \\(B, C, H, W\\) tensor, got shape \\(2, 4, 4\\)"):
        gated_crf_loss(probs[0], torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="image contains NaN"):
        gated_crf_loss(probs, torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(TypeError, match="probs must be a floating-point tensor, got dtype torch.int64"):
        gated_crf_loss(probs.long(), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="radius must be a positive int, got 0"):
        gated_crf_loss(probs, torch.rand(1, 1, 4, 4), radius=0)
    with pytest.raises(ValueError, match="sigma_rgb must be positive, got -0.1"):
        gated_crf_loss(probs, torch.rand(1, 1, 4, 4), sigma_rgb=-0.1)
