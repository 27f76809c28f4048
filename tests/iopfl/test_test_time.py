import math

import pytest
import torch
from torch import nn

from src.inference.outside import OUTSIDE_METHODS, evaluate_outside, load_stream
from src.inference.test_time_routing import (
    RoutingConfig,
    consistency_loss,
    entropy_loss,
    run_test_time_routing,
    shape_loss,
    use_batch_statistics,
)
from src.metrics.slice_volume import score_slices
from src.models.routed_conv import build_routing_model
from src.models.unet2d import UNet2D


def test_entropy_in_bits():
    assert entropy_loss(torch.zeros(2, 2, 4, 4)).item() == pytest.approx(1.0)  # uniform over 2 classes: 1 bit
    confident = torch.zeros(1, 2, 4, 4)
    confident[:, 1] = 50.0
    assert entropy_loss(confident).item() == pytest.approx(0.0, abs=1e-6)
    # mean per pixel: the batch size does not scale it (the reference sums over the batch)
    assert entropy_loss(torch.zeros(7, 2, 4, 4)).item() == pytest.approx(1.0)


def test_consistency_is_zero_for_a_constant_model_and_positive_otherwise():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    x = torch.randn(3, 3, 8, 8)
    probs = torch.full((3, 2, 8, 8), 0.5)
    g = torch.Generator().manual_seed(0)
    assert consistency_loss(Constant(), x, probs, 0.5, g).item() == 0.0
    conv = nn.Conv2d(3, 2, 3, padding=1)
    p = torch.softmax(conv(x), 1)
    assert consistency_loss(conv, x, p, 0.5, g).item() > 0


def test_shape_loss_is_local_max_minus_min():
    probs = torch.zeros(1, 2, 5, 5)
    assert shape_loss(probs, kernel=3).item() == 0.0
    probs[0, 1, 2, 2] = 1.0  # one bright pixel: its 3x3 neighbourhood (9 pixels) has max - min = 1
    assert shape_loss(probs, kernel=3, scale=1.0).item() == pytest.approx(3.0)  # sqrt(9 * 1^2)


def test_config_rules():
    with pytest.raises(ValueError, match="shape_kernel must be odd"):
        RoutingConfig(shape_kernel=4)
    with pytest.raises(ValueError, match="passes must be >= 1"):
        RoutingConfig(passes=0)


def test_batch_statistics_mode_ignores_running_stats():
    m = use_batch_statistics(nn.Sequential(nn.BatchNorm2d(2))).eval()
    x = torch.randn(4, 2, 3, 3) * 5 + 3
    assert m(x).mean().abs().item() < 1e-5


def test_routing_updates_only_routing_parameters_and_returns_every_pass():
    torch.manual_seed(0)
    template = UNet2D(features=(4, 8, 16))
    experts = [UNet2D(features=(4, 8, 16)).state_dict() for _ in range(3)]
    model = build_routing_model(template, experts, experts[-1])
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "expert_" in k}
    routers = {k: v.clone() for k, v in model.state_dict().items() if "router" in k}
    parts = []
    passes = run_test_time_routing(model, torch.randn(6, 3, 16, 16), RoutingConfig(passes=2, batch_size=4),
                                   log=lambda p, d: parts.append(d))
    assert len(passes) == 2 and passes[0].shape == (6, 16, 16)
    assert set(parts[0]) == {"entropy", "consistency", "shape"} and math.isfinite(parts[0]["entropy"])
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in routers.items())


def test_outside_scores_every_method(tiny_prostate):
    from src.data.datalist import load_site_datalist

    split = load_site_datalist(tiny_prostate["datalists"] / "ISBI.json", tiny_prostate["data"])
    items = split["training"] + split["validation"] + split["testing"]
    template = UNet2D(features=(4, 8, 16))
    experts = [UNet2D(features=(4, 8, 16)).state_dict() for _ in range(2)]
    predictions = {}
    out = evaluate_outside(template, template.state_dict(), experts, items, RoutingConfig(passes=1),
                           predictions=predictions)
    assert set(out) == set(OUTSIDE_METHODS)
    assert all(0.0 <= m["ood_dice"] <= 1.0 and m["ood_hd95"] >= 0 for m in out.values())
    # the returned label maps are the ones scored, in the stream's order
    images, labels, cases, slices = load_stream(items)
    assert set(predictions) == set(OUTSIDE_METHODS)
    for method, pred in predictions.items():
        assert pred.shape == labels.shape
        assert score_slices(pred.numpy(), labels, cases, slices, prefix="ood") == out[method]
