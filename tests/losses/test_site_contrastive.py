"""Site-contrastive loss: range, site 0 like any other site, gate-only re-run equals a full re-run."""

import pytest
import torch
import torch.nn.functional as F

from src.losses.site_contrastive import site_contrastive_loss
from src.models.unet_multihead import SiteChannelSelection, UNetLCMultiHead


@pytest.fixture
def gate_module():
    torch.manual_seed(0)
    return SiteChannelSelection(channels=32, num_sites=4)


def test_loss_in_range_including_saturated_gates(gate_module):
    for scale in (0.1, 1.0, 100.0):
        x = torch.randn(3, 32, 4, 4) * scale
        with torch.no_grad():
            for p in gate_module.parameters():
                p.mul_(scale)
        for site in range(4):
            own = gate_module.gate(x, site)
            loss = site_contrastive_loss(gate_module, x, own, site)
            assert -1.0 <= loss.item() <= 0.0


def test_extremes_of_the_range():
    m = SiteChannelSelection(channels=32, num_sites=3)
    x = torch.randn(2, 32, 2, 2)
    own = m.gate(x, 1)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()  # every gate is sigmoid(0) = 0.5
    assert site_contrastive_loss(m, x, torch.full_like(own, 0.5), 1).item() == 0.0
    assert site_contrastive_loss(m, x, torch.ones_like(own), 1).item() == pytest.approx(-0.25)


@pytest.mark.parametrize("site", [0, 2])
def test_site_zero_is_treated_like_any_other_site(gate_module, site):
    x = torch.randn(2, 32, 3, 3)
    own = gate_module.gate(x, site)
    with torch.no_grad():
        expected = -sum(F.mse_loss(own, gate_module.gate(x, k)) for k in range(4) if k != site) / 3
    assert site_contrastive_loss(gate_module, x, own, site).item() == pytest.approx(expected.item(), rel=1e-6)


def test_site_zero_loss_is_not_zero_pulled_into_own_site(gate_module):
    """The reference quirk would compare site 0's gate with itself (MSE 0); here all three others count."""
    x = torch.randn(2, 32, 3, 3)
    own = gate_module.gate(x, 0)
    losses = [F.mse_loss(own, gate_module.gate(x, k)).item() for k in (1, 2, 3)]
    assert min(losses) > 0
    assert site_contrastive_loss(gate_module, x, own, 0).item() == pytest.approx(-sum(losses) / 3, rel=1e-6)


def test_gradient_flows_only_through_own_gate(gate_module):
    x = torch.randn(2, 32, 3, 3)
    own = gate_module.gate(x, 1)
    own.retain_grad()
    site_contrastive_loss(gate_module, x, own, 1).backward()
    assert own.grad.abs().sum() > 0
    with torch.no_grad():
        others = [gate_module.gate(x, k) for k in (0, 2, 3)]
    expected = -sum(2 * (own - h) / own.numel() for h in others) / 3
    torch.testing.assert_close(own.grad, expected)


def test_gate_only_rerun_equals_full_model_rerun_in_eval_mode():
    torch.manual_seed(1)
    model = UNetLCMultiHead(1, 2, num_sites=3, site_index=1).eval()
    x = torch.rand(2, 1, 32, 32)
    out = model(x)
    loss = site_contrastive_loss(model.channel_selection, out.bottleneck, out.gate, 1)
    with torch.no_grad():
        full = [model(x, site_index=k).gate for k in (0, 2)]
    expected = -(F.mse_loss(out.gate, full[0]) + F.mse_loss(out.gate, full[1])) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_inputs(gate_module):
    x = torch.randn(2, 32, 3, 3)
    own = gate_module.gate(x, 0)
    with pytest.raises(ValueError, match=r"site_index must be an int in \[0, 4\), got 4"):
        site_contrastive_loss(gate_module, x, own, 4)
    with pytest.raises(ValueError, match=r"own_gate must have shape \(2, 32, 1, 1\), got \(2, 16, 1, 1\)"):
        site_contrastive_loss(gate_module, x, own[:, :16], 0)
    with pytest.raises(ValueError, match="bottleneck contains NaN"):
        site_contrastive_loss(gate_module, x * float("nan"), own, 0)
    with pytest.raises(TypeError, match="channel_selection must be a SiteChannelSelection, got Linear"):
        site_contrastive_loss(torch.nn.Linear(2, 2), x, own, 0)
