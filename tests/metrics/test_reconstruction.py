"""Per-volume NMSE / PSNR / SSIM against scikit-image and numpy (fastMRI definitions), plus bad input."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from src.metrics.reconstruction import mean_volume_metrics, nmse, psnr, ssim, volume_metrics


def _volume_pair(seed, shape=(3, 40, 48), noise=0.1):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape) * rng.uniform(0.5, 3.0)
    pred = np.clip(gt + noise * rng.standard_normal(shape), 0, None)
    return gt, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_skimage_and_numpy(seed):
    gt, pred = _volume_pair(seed)
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    maxval = gt.max()
    expected_ssim = np.mean([structural_similarity(gt[s], pred[s], data_range=maxval) for s in range(gt.shape[0])])
    assert ssim(g, p) == pytest.approx(expected_ssim, abs=1e-10)
    assert psnr(g, p) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=maxval), abs=1e-9)
    assert nmse(g, p) == pytest.approx(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2, rel=1e-10)


def test_per_slice_forms_match_the_reference_slice_average():
    gt, pred = _volume_pair(5)
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    maxval = gt.max()
    expected_psnr = np.mean([peak_signal_noise_ratio(gt[s], pred[s], data_range=maxval) for s in range(3)])
    expected_nmse = np.mean([np.linalg.norm(gt[s] - pred[s]) ** 2 / np.linalg.norm(gt[s]) ** 2 for s in range(3)])
    assert psnr(g, p, per_slice=True) == pytest.approx(expected_psnr, abs=1e-9)
    assert nmse(g, p, per_slice=True) == pytest.approx(expected_nmse, rel=1e-10)


def test_float32_volume_and_perfect_reconstruction():
    gt, pred = _volume_pair(3)
    g, p = torch.from_numpy(gt).float(), torch.from_numpy(pred).float()
    expected = np.mean([structural_similarity(gt[s], pred[s], data_range=gt.max()) for s in range(3)])
    assert ssim(g, p) == pytest.approx(expected, abs=1e-5)
    assert ssim(g, g) == pytest.approx(1.0)
    assert nmse(g, g) == 0.0


def test_volume_metrics_names_and_mean_over_volumes():
    pairs = [tuple(torch.from_numpy(a) for a in _volume_pair(s)) for s in (0, 1)]
    per_volume = [volume_metrics(gt, pred) for gt, pred in pairs]
    assert set(per_volume[0]) == {"val_nmse", "val_psnr", "val_ssim"}
    mean = mean_volume_metrics(pairs)
    for name in mean:
        assert mean[name] == pytest.approx((per_volume[0][name] + per_volume[1][name]) / 2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda g: ssim(g, g[:2]), ValueError, r"same shape, got \(3, 40, 48\) and \(2, 40, 48\)"),
        (lambda g: psnr(g[0], g[0]), ValueError, r"gt must be one volume \(S, H, W\), got shape \(40, 48\)"),
        (lambda g: nmse(g, torch.full_like(g, float("nan"))), ValueError, "pred contains NaN"),
        (lambda g: nmse(g.long(), g.long()), TypeError, "gt must be a real floating tensor, got dtype torch.int64"),
        (lambda g: psnr(torch.zeros_like(g), g), ValueError, "gt volume max must be positive.*0.0"),
        (lambda g: nmse(torch.zeros_like(g), g), ValueError, "zero energy"),
        (lambda g: ssim(g, g, win_size=6), ValueError, "win_size must be an odd int >= 3, got 6"),
        (lambda g: ssim(g[:, :5, :5], g[:, :5, :5]), ValueError, r"at least 7x7 for SSIM, got \(5, 5\)"),
        (lambda g: mean_volume_metrics([]), ValueError, "at least one"),
    ],
)
def test_bad_input_is_rejected_with_the_value(call, error, match):
    gt = torch.from_numpy(_volume_pair(0)[0])
    with pytest.raises(error, match=match):
        call(gt)
