"""Multi-head U-Net: shapes, registered trainable channel selection, key groups, site handling."""

import pytest
import torch

from src.models.unet_multihead import UNetLCMultiHead, fedicra_key_groups


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UNetLCMultiHead(in_channels=3, num_classes=3, num_sites=5, site_index=2)


def test_output_shapes(model):
    out = model(torch.rand(2, 3, 32, 48))
    assert out.logits.shape == (2, 3, 32, 48)
    assert [tuple(a.shape) for a in out.aux_logits] == [(2, 3, 8, 12), (2, 3, 16, 24), (2, 3, 32, 48)]
    assert out.gate.shape == (2, 256, 1, 1)
    assert out.bottleneck.shape == (2, 256, 2, 3)
    assert ((out.gate > 0) & (out.gate < 1)).all()


@pytest.mark.parametrize("upsample,unet_params", [("bilinear", 1_813_474), ("deconv", 1_944_034)])
def test_parameter_counts(upsample, unet_params):
    m = UNetLCMultiHead(1, 2, 5, 0, upsample=upsample)
    count = {k: sum(p.numel() for n, p in m.named_parameters() if n.startswith(k))
             for k in ("encoder", "decoder", "aux_heads", "channel_selection")}
    assert count["encoder"] + count["decoder"] == unet_params
    # per head: conv3x3 (+bias) -> 512, BN (weight, bias), conv1x1 512 -> C=2 without bias
    assert count["aux_heads"] == 512 * 9 * (64 + 32 + 16) + 3 * (512 + 2 * 512 + 512 * 2)
    assert count["channel_selection"] == 5 * 256 + 256 * 256 + 512 * 16 + 16 * 256


def test_channel_selection_is_registered_and_trains(model):
    keys = model.state_dict().keys()
    assert any(k.startswith("channel_selection.site_embedding") for k in keys)
    assert any(k.startswith("channel_selection.fc") for k in keys)
    model.zero_grad()
    out = model(torch.rand(2, 3, 32, 32))
    out.logits.sum().backward()
    for name, p in model.channel_selection.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_site_zero_is_a_site_and_sites_differ(model):
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        own = model(x).gate
        g0, g2 = model(x, site_index=0).gate, model(x, site_index=2).gate
    assert torch.equal(own, g2)
    assert not torch.allclose(g0, g2)
    model.train()


def test_key_groups_are_disjoint_and_cover_state_dict(model):
    groups = fedicra_key_groups(model)
    keys = set(model.state_dict().keys())
    assert groups.shared | groups.adaptive | groups.personal == keys
    assert not (groups.shared & groups.adaptive or groups.shared & groups.personal or groups.adaptive & groups.personal)
    assert groups.personal and all(k.startswith("channel_selection.") for k in groups.personal)
    assert "decoder.out_conv.weight" in groups.adaptive and "decoder.up1.conv.1.running_mean" in groups.shared
    assert all(k.startswith("decoder.") for k in groups.adaptive)
    assert not groups.sent & groups.personal


def test_bad_inputs(model):
    with pytest.raises(ValueError, match=r"site_index must be an int in \[0, 5\), got 5"):
        model(torch.rand(1, 3, 32, 32), site_index=5)
    with pytest.raises(ValueError, match=r"site_index must be an int in \[0, 5\), got -1"):
        UNetLCMultiHead(1, 2, 5, -1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"divisible by 16, got \(30, 32\)"):
        model(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="upsample must be one of .*, got 'nearest'"):
        UNetLCMultiHead(1, 2, 5, 0, upsample="nearest")
    with pytest.raises(ValueError, match="num_sites must be >= 2 for a site-contrastive gate, got 1"):
        UNetLCMultiHead(1, 2, 1, 0)
