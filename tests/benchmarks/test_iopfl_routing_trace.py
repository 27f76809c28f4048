"""The routing trace's instruments (benchmarks/iopfl_routing_trace.py) and the two facts docs/iopfl.md draws from it,
on hand-checkable cases: forced routing weights, the weight statistics, BN drift, and that a uniform rescaling of
the routing weights cancels behind a batch-statistics BatchNorm but not at the transposed-conv + skip concat."""

import torch

from benchmarks.iopfl_routing_trace import bn_drift, forced_weights, routing_weights
from src.inference.test_time_routing import _augment, _undo
from src.models.routed_conv import RoutedConv2d, build_routing_model
from src.models.unet2d import UNet2D


def _routed(n_experts=2):
    torch.manual_seed(0)
    template = UNet2D(features=(4, 8, 16))
    state = template.state_dict()
    return template, state, build_routing_model(template, [state] * n_experts, state)


def test_forced_weights_one_over_e_of_identical_experts_is_the_expert_and_restores_the_router():
    template, _, model = _routed(2)
    x = torch.randn(4, 3, 16, 16)
    template.train()  # batch statistics, as the routing model uses
    with forced_weights(model, 0.5):  # 2 identical experts x 0.5 = the expert itself
        assert torch.allclose(model.eval()(x), template(x), atol=1e-4)
    layer = next(m for m in model.modules() if isinstance(m, RoutedConv2d))
    assert "forward" not in vars(layer)  # the class method again: the router is back in use


def test_routing_weight_statistics_count_every_layer_and_sample():
    _, state, model = _routed(3)
    with forced_weights(model, 0.25):
        w = routing_weights(model, torch.randn(5, 3, 16, 16), batch_size=5)
    assert w == {}  # forced weights bypass the router: nothing to record
    w = routing_weights(model, torch.randn(5, 3, 16, 16), batch_size=5)
    assert set(w) == {"r_expert0", "r_expert1", "r_expert2", "r_sum_mean", "r_sum_min", "r_sum_max"}
    assert all(0 < w[f"r_expert{e}"] < 1 for e in range(3)) and w["r_sum_min"] <= w["r_sum_mean"] <= w["r_sum_max"]
    assert abs(w["r_sum_mean"] - sum(w[f"r_expert{e}"] for e in range(3))) < 1e-5
    assert bn_drift(model, state) == 0.0
    name, bn = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    gamma = state[f"{name}.weight"].float()
    with torch.no_grad():
        bn.weight.mul_(2.0)  # one layer's gamma doubled: drift = |gamma| / |every BN affine parameter of the global|
    den = sum(float((state[f"{n}.{k}"].float() ** 2).sum()) for n, m in model.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d) for k in ("weight", "bias"))
    assert abs(bn_drift(model, state) - (float((gamma**2).sum()) / den) ** 0.5) < 1e-6


def test_uniform_weight_scale_cancels_behind_batch_norm_but_not_through_the_skip_concat():
    _, _, model = _routed(2)
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    with forced_weights(model, 0.5):
        ref = model(x)
    with forced_weights(model, 1.5):  # every kernel x3: the routers' typical start (sum of sigmoids ~ E/2)
        scaled = model(x)
    assert not torch.allclose(scaled, ref, atol=1e-3)  # transposed convs + skip concat, output conv: not cancelled
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4, track_running_stats=False))
    y1 = conv(x)
    with torch.no_grad():
        conv[0].weight.mul_(3.0)
    assert torch.allclose(conv(x), y1, atol=1e-4)  # conv (no bias) -> batch-statistics BN: the scale cancels


def test_consistency_views_are_undone_exactly():
    x = torch.randn(8, 2, 6, 6)
    flips = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.bool)
    rots = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    view = _augment(x, flips, rots)
    assert not torch.equal(view[1:], x[1:])
    assert torch.equal(_undo(view, flips, rots), x)
