import io

import pytest
import torch

from src.models.cooperative_net import PART_NAMES, CooperativeNet
from src.models.freezable_batchnorm import FreezableBatchNorm2d, frozen_batchnorm, frozen_parameters


@pytest.fixture(autouse=True)
def _single_thread():
    """Small convolutions run fastest on one thread, and much slower when threads fight a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def net() -> CooperativeNet:
    torch.manual_seed(0)
    return CooperativeNet()


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shapes_at_192(net):
    net.eval()
    x = torch.rand(1, 1, 192, 192)
    with torch.no_grad():
        z_i, z_s = net.encode(x)
        logits = net(x)
        assert z_i.shape == z_s.shape == (1, 128, 12, 12)
        assert logits.shape == (1, 4, 192, 192)
        assert net.image_decoder(z_i).shape == (1, 1, 192, 192)
        assert net.refine(logits).shape == (1, 4, 192, 192)


@pytest.mark.parametrize("hw", [(32, 48), (64, 16)])
def test_any_multiple_of_16(net, hw):
    net.eval()
    with torch.no_grad():
        z_i, _ = net.encode(torch.rand(2, 1, *hw))
        assert z_i.shape == (2, 128, hw[0] // 16, hw[1] // 16)
        assert net(torch.rand(2, 1, *hw)).shape == (2, 4, *hw)


def test_parameter_budget_matches_digest(net):
    ftn = sum(_n_params(getattr(net, p)) for p in PART_NAMES[:4])
    stn = _n_params(net.stn)
    assert 1.4e6 < ftn < 1.65e6  # digest: FTN ~1.5M
    assert 0.9e6 < stn < 1.1e6  # digest: STN ~1.0M


def test_image_decoder_output_in_unit_range(net):
    net.eval()
    with torch.no_grad():
        recon = net.image_decoder(net.encode(torch.rand(2, 1, 32, 32))[0])
    assert recon.min() >= 0 and recon.max() <= 1
    raw = CooperativeNet(image_output_sigmoid=False)
    assert raw.image_decoder.sigmoid is False


def test_state_dict_holds_all_five_parts_and_keys_partition(net):
    keys = set(net.state_dict())
    by_part = net.state_dict_keys_by_part()
    assert set(by_part) == set(PART_NAMES)
    assert all(by_part[p] for p in PART_NAMES)
    assert set().union(*by_part.values()) == keys
    assert sum(len(v) for v in by_part.values()) == len(keys)
    assert any(k.endswith("running_mean") for k in by_part["stn"])


def test_state_dict_round_trip():
    torch.manual_seed(1)
    src = CooperativeNet()
    # move BN running stats away from their defaults so that buffers are exercised too
    src.train()
    with torch.no_grad():
        src(torch.rand(2, 1, 32, 32))
        src.refine(torch.randn(2, 4, 32, 32))
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(2)
    dst = CooperativeNet()
    x = torch.rand(2, 1, 32, 32)
    src.eval()
    dst.eval()
    with torch.no_grad():
        assert not torch.allclose(src(x), dst(x))
        dst.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(src(x), dst(x))
        assert torch.equal(src.refine(src(x)), dst.refine(dst(x)))
        assert torch.equal(src.image_decoder(src.encode(x)[0]), dst.image_decoder(dst.encode(x)[0]))


def test_one_hot_shape():
    net = CooperativeNet(num_classes=3)
    label = torch.tensor([[[0, 1], [2, 1]]])
    onehot = net.one_hot_shape(label)
    assert onehot.shape == (1, 3, 2, 2)
    assert torch.equal(onehot.argmax(1), label)
    assert torch.equal(onehot.sum(1), torch.ones(1, 2, 2))


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (torch.rand(1, 2, 32, 32), ValueError, r"image must be \(B, 1, H, W\), got shape \(1, 2, 32, 32\)"),
        (torch.rand(1, 32, 32), ValueError, r"got shape \(1, 32, 32\)"),
        (torch.rand(1, 1, 40, 32), ValueError, "multiples of 16, got 40x32"),
        (torch.ones(1, 1, 32, 32, dtype=torch.int64), TypeError, "floating-point.*torch.int64"),
        (torch.full((1, 1, 32, 32), float("nan")), ValueError, "NaN"),
        ([[0.0]], TypeError, "torch.Tensor, got list"),
    ],
)
def test_bad_image(net, image, error, match):
    with pytest.raises(error, match=match):
        net.encode(image)


@pytest.mark.parametrize(
    ("label", "error", "match"),
    [
        (torch.full((1, 4, 4), 4), ValueError, r"\[0, 3\], got range \[4, 4\]"),
        (torch.full((1, 4, 4), -1), ValueError, r"got range \[-1, -1\]"),
        (torch.zeros(1, 4, 4), TypeError, "integer tensor, got dtype torch.float32"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.long), ValueError, r"\(B, H, W\), got shape \(1, 1, 4, 4\)"),
    ],
)
def test_bad_label(net, label, error, match):
    with pytest.raises(error, match=match):
        net.one_hot_shape(label)


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2, got 1"):
        CooperativeNet(num_classes=1)
    with pytest.raises(ValueError, match="shape_temperature must be > 0, got 0"):
        CooperativeNet(shape_temperature=0)
    with pytest.raises(ValueError, match="base_channels must be a positive int, got 0"):
        CooperativeNet(base_channels=0)
    with pytest.raises(ValueError, match=r"logits must be \(B, 4, H, W\)"):
        CooperativeNet().refine(torch.rand(1, 3, 16, 16))


def test_frozen_batchnorm_uses_batch_stats_without_updating_or_training():
    torch.manual_seed(0)
    bn = FreezableBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.train()
    x = (torch.randn(4, 3, 5, 5) * 3 + 1).requires_grad_(True)
    with torch.no_grad():
        reference = torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with frozen_batchnorm(bn):
        out = bn(x)
        assert bn.frozen
    assert not bn.frozen
    torch.testing.assert_close(out, reference)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    out.sum().backward()
    assert x.grad is not None and bn.weight.grad is None and bn.bias.grad is None
    # unfrozen: the running stats move and the affine parameters get gradients
    bn(x).sum().backward()
    assert not torch.equal(bn.running_mean, before["running_mean"])
    assert bn.weight.grad is not None


def test_frozen_parameters_restores_flags():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].bias.requires_grad_(False)
    with frozen_parameters(net):
        assert not any(p.requires_grad for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, False]
