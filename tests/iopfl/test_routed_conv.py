import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.models.routed_conv import RoutedConv2d, Router, build_routing_model, routing_parameters
from src.models.unet2d import UNet2D, norm_keys

torch.manual_seed(0)
LAYERS = {
    "conv": lambda: nn.Conv2d(3, 4, 3, padding=1, stride=2),
    "transposed": lambda: nn.ConvTranspose2d(3, 4, 2, stride=2),
}


def _experts(kind, n=3):
    layers = [LAYERS[kind]() for _ in range(n)]
    return layers, [m.weight.detach() for m in layers], [m.bias.detach() for m in layers]


@pytest.mark.parametrize("kind", list(LAYERS))
def test_one_hot_weights_give_the_single_expert(kind):
    layers, w, b = _experts(kind)
    routed = RoutedConv2d.from_experts(layers[0], w, b)
    x = torch.randn(2, 3, 8, 8)
    for e, layer in enumerate(layers):
        r = F.one_hot(torch.tensor([e, e]), 3).float()
        assert torch.allclose(routed(x, r), layer(x), atol=1e-5)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_general_weights_give_the_weighted_kernel_sum_per_sample(kind):
    layers, w, b = _experts(kind)
    routed = RoutedConv2d.from_experts(layers[0], w, b)
    x = torch.randn(2, 3, 8, 8)
    r = torch.tensor([[0.2, 0.7, 0.4], [0.9, 0.1, 0.05]])
    out = routed(x, r)
    for i in range(2):  # brute force: build each sample's layer by hand
        ref = LAYERS[kind]()
        with torch.no_grad():
            ref.weight.copy_(sum(r[i, e] * w[e] for e in range(3)))
            ref.bias.copy_(sum(r[i, e] * b[e] for e in range(3)))
        assert torch.allclose(out[i : i + 1], ref(x[i : i + 1]), atol=1e-5)


def test_router_gives_sigmoid_weights_per_sample():
    r = Router(4, 5).eval()(torch.randn(3, 4, 6, 6))
    assert r.shape == (3, 5) and bool(((r > 0) & (r < 1)).all())


def test_bad_routing_weights_shape():
    layers, w, b = _experts("conv")
    with pytest.raises(ValueError, match="routing weights must be"):
        RoutedConv2d.from_experts(layers[0], w, b)(torch.randn(2, 3, 8, 8), torch.ones(2, 2))


def test_routing_model_trains_only_routers_and_norm_affine():
    template = UNet2D(features=(4, 8, 16))
    experts = [UNet2D(features=(4, 8, 16)).state_dict() for _ in range(3)]
    model = build_routing_model(template, experts, experts[-1])
    routed = [m for m in model.modules() if isinstance(m, RoutedConv2d)]
    n_convs = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in template.modules())
    assert len(routed) == n_convs and all(m.num_experts == 3 for m in routed)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in routing_parameters(model)}
    affine = [k for k in norm_keys(template) if k.endswith(("weight", "bias"))]
    n_affine = sum(template.state_dict()[k].numel() for k in affine)
    n_router = sum(p.numel() for m in model.modules() if isinstance(m, Router) for p in m.parameters())
    assert sum(p.numel() for p in routing_parameters(model)) == n_affine + n_router
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2, 16, 16)


def test_routing_model_with_identical_experts_and_unit_weights_matches_the_expert_in_batch_norm_mode():
    template = UNet2D(features=(4, 8, 16))
    state = template.state_dict()
    model = build_routing_model(template, [state], state)
    for m in model.modules():
        if isinstance(m, RoutedConv2d):
            m.router.forward = lambda x: torch.ones(x.shape[0], 1)
    x = torch.randn(3, 3, 16, 16)
    template.train()  # batch statistics, as the routing model uses
    assert torch.allclose(model(x), template(x), atol=1e-4)


def test_missing_expert_key():
    template = UNet2D(features=(4, 8, 16))
    bad = {k: v for k, v in template.state_dict().items() if k != "head.weight"}
    with pytest.raises(KeyError, match="head.weight"):
        build_routing_model(template, [bad], template.state_dict())
