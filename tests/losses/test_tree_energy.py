"""Multiscale tree energy loss against a dense (S-matrix) composition, plus gradient flow and bad input."""

import pytest
import torch
import torch.nn.functional as F

from src.losses.tree_energy import MultiscaleTreeEnergyLoss, multiscale_tree_energy_loss
from src.losses.tree_filter import build_grid_mst


def _dense_filter(x, guide, sigma):
    """Dense differentiable reference: S from path products of exp(-|g_i - g_parent|^2 / sigma), y = S x / S 1."""
    tree = build_grid_mst(guide)
    b, c, h, w = x.shape
    out = []
    for n in range(b):
        parent = tree.parent[n]
        g = guide[n].reshape(guide.shape[1], -1)
        weights = torch.exp(-((g - g[:, torch.from_numpy(parent)]) ** 2).sum(0) / sigma)

        def path(i, parent=parent):
            p = [i]
            while parent[p[-1]] != p[-1]:
                p.append(int(parent[p[-1]]))
            return p

        paths = [path(i) for i in range(h * w)]
        rows = []
        for i in range(h * w):
            row = []
            for j in range(h * w):
                common = set(paths[i]) & set(paths[j])
                lca = next(v for v in paths[i] if v in common)
                edges = paths[i][: paths[i].index(lca)] + paths[j][: paths[j].index(lca)]
                row.append(torch.prod(weights[edges]) if edges else weights.new_tensor(1.0))
            rows.append(torch.stack(row))
        s = torch.stack(rows)
        xf = x[n].reshape(c, -1).T
        out.append(((s @ xf) / s.sum(1, keepdim=True)).T.reshape(c, h, w))
    return torch.stack(out)


def _dense_loss(logits, image, aux, mask, weight=0.1):
    probs = torch.softmax(logits, 1)
    guide = image.repeat(1, 3, 1, 1) if image.shape[1] == 1 else image
    filtered = _dense_filter(probs, guide, 0.02)
    for a in aux:
        a_up = F.interpolate(a, size=logits.shape[2:], mode="bilinear", align_corners=False)
        filtered = _dense_filter(filtered, a_up, 1.0)
    return weight * (mask.unsqueeze(1) * (probs - filtered).abs()).sum() / mask.sum()


def _inputs(seed=0, size=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, size, size, dtype=torch.float64, generator=g, requires_grad=True)
    image = torch.rand(2, 1, size, size, dtype=torch.float64, generator=g)
    aux = [torch.randn(2, 2, size // s, size // s, dtype=torch.float64, generator=g, requires_grad=True)
           for s in (4, 2, 1)]
    mask = torch.rand(2, size, size, generator=g) > 0.3
    return logits, image, aux, mask


def test_value_and_gradients_match_dense_reference():
    logits, image, aux, mask = _inputs()
    loss = multiscale_tree_energy_loss(logits, image, aux, mask)
    grads = torch.autograd.grad(loss, [logits, *aux])
    ref = _dense_loss(logits, image, aux, mask)
    ref_grads = torch.autograd.grad(ref, [logits, *aux])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-10)


def test_every_aux_head_receives_gradient_and_image_none():
    logits, image, aux, mask = _inputs(seed=1, size=8)
    image.requires_grad_(True)
    MultiscaleTreeEnergyLoss()(logits, image, aux, mask).backward()
    assert logits.grad.abs().sum() > 0
    for a in aux:
        assert a.grad is not None and a.grad.abs().sum() > 0
    assert image.grad is None


def test_no_unlabelled_pixel_gives_zero():
    logits, image, aux, mask = _inputs(seed=2)
    loss = multiscale_tree_energy_loss(logits, image, aux, torch.zeros_like(mask))
    assert loss.item() == 0.0
    loss.backward()


def test_constant_prediction_gives_zero_energy():
    _, image, aux, mask = _inputs(seed=3)
    logits = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    assert multiscale_tree_energy_loss(logits, image, aux, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_bad_inputs():
    logits, image, aux, mask = _inputs(seed=4)
    with pytest.raises(TypeError, match="unlabeled_mask must be a bool tensor"):
        multiscale_tree_energy_loss(logits, image, aux, mask.long())
    with pytest.raises(ValueError, match=r"unlabeled_mask must have shape \(2, 4, 4\), got \(2, 4, 5\)"):
        multiscale_tree_energy_loss(logits, image, aux, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="image must have 1 or 3 channels, got 2"):
        multiscale_tree_energy_loss(logits, image.repeat(1, 2, 1, 1), aux, mask)
    with pytest.raises(ValueError, match=r"aux_logits\[1\] contains NaN"):
        multiscale_tree_energy_loss(logits, image, [aux[0], aux[1] * float("nan")], mask)
    with pytest.raises(ValueError, match="feature_sigma must be positive, got 0"):
        MultiscaleTreeEnergyLoss(feature_sigma=0)
