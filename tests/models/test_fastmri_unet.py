"""fastMRI U-Net: parameter counts by formula, encoder/decoder key split, sizes 192/240/320, bad input."""

import pytest
import torch
from torch import nn

from src.models.fastmri_unet import FastMRIUNet, encoder_decoder_keys


def _conv_block_params(c_in: int, c_out: int) -> int:
    return 9 * c_in * c_out + 9 * c_out * c_out  # two bias-free 3x3 convs, non-affine InstanceNorm


def test_parameter_counts_match_hand_formula():
    model = FastMRIUNet(1, 1, channels=32, num_pools=4)
    encoder_keys, decoder_keys = encoder_decoder_keys(model)
    state = model.state_dict()
    chans = [1, 32, 64, 128, 256, 512]
    expected_encoder = sum(_conv_block_params(a, b) for a, b in zip(chans[:-1], chans[1:]))
    expected_decoder = sum(4 * c * 2 * c + _conv_block_params(2 * c, c) for c in (256, 128, 64, 32)) + 32 + 1
    assert sum(state[k].numel() for k in encoder_keys) == expected_encoder == 4_709_664
    assert sum(state[k].numel() for k in decoder_keys) == expected_decoder == 3_046_433
    assert sum(p.numel() for p in model.parameters()) == 7_756_097


def test_key_sets_disjoint_cover_state_dict_and_follow_the_modules():
    model = FastMRIUNet(1, 1, channels=4, num_pools=3)
    encoder_keys, decoder_keys = encoder_decoder_keys(model)
    assert encoder_keys and decoder_keys
    assert not set(encoder_keys) & set(decoder_keys)
    assert set(encoder_keys) | set(decoder_keys) == set(model.state_dict())
    expected_encoder = {f"encoder.{k}" for k in model.encoder.state_dict()}
    expected_encoder |= {f"bottleneck.{k}" for k in model.bottleneck.state_dict()}
    assert set(encoder_keys) == expected_encoder
    assert "head.weight" in decoder_keys and "head.bias" in decoder_keys


def test_no_batchnorm_and_no_running_statistics():
    model = FastMRIUNet(channels=4, num_pools=2)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in model.modules()) > 0
    assert list(model.buffers()) == []


@pytest.mark.parametrize("size", [192, 240, 320, 33])
def test_fully_convolutional_for_site_sizes(size):
    torch.manual_seed(0)
    model = FastMRIUNet(channels=4, num_pools=4).eval()
    out = model(torch.randn(1, 1, size, size))
    assert out.shape == (1, 1, size, size)
    assert torch.isfinite(out).all()


def test_shared_encoder_gives_same_bottleneck_and_personal_decoder_differs():
    torch.manual_seed(0)
    a, b = FastMRIUNet(channels=4, num_pools=2), FastMRIUNet(channels=4, num_pools=2)
    encoder_keys, _ = encoder_decoder_keys(a)
    b.load_state_dict({k: a.state_dict()[k] for k in encoder_keys}, strict=False)  # share encoder only
    captured = []
    for model in (a, b):
        model.bottleneck.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    x = torch.randn(1, 1, 16, 16)
    out_a, out_b = a(x), b(x)
    torch.testing.assert_close(captured[0], captured[1])
    assert not torch.allclose(out_a, out_b)


def test_one_backward_reaches_every_parameter():
    model = FastMRIUNet(channels=4, num_pools=2)
    model(torch.randn(2, 1, 16, 16)).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m(torch.randn(1, 2, 32, 32)), ValueError, r"x must have shape \(B, 1, H, W\), got \(1, 2, 32, 32\)"),
        (lambda m: m(torch.randn(1, 32, 32)), ValueError, r"got \(1, 32, 32\)"),
        (lambda m: m(torch.randn(1, 1, 8, 32)), ValueError, r"spatial size must be >= 16.*\(1, 1, 8, 32\)"),
        (lambda m: m(torch.ones(1, 1, 32, 32, dtype=torch.int64)), TypeError, "dtype torch.int64"),
        (lambda m: FastMRIUNet(channels=0), ValueError, "channels must be a positive int, got 0"),
        (lambda m: FastMRIUNet(num_pools=0), ValueError, "num_pools must be a positive int, got 0"),
        (lambda m: FastMRIUNet(drop_prob=1.5), ValueError, "drop_prob must be in \\[0, 1\\), got 1.5"),
        (lambda m: encoder_decoder_keys(nn.Linear(2, 2)), ValueError, "outside encoder.*'weight'"),
    ],
)
def test_bad_input_is_rejected_with_the_value(call, error, match):
    model = FastMRIUNet(channels=2, num_pools=4)
    with pytest.raises(error, match=match):
        call(model)
