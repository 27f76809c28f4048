"""The pieces of the privacy benchmarks that decide their numbers (the runs themselves are minutes long)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks.gradient_leakage import apply_filter, images, site_update, small_cnn
from src.privacy.filters import PrivacySettings


def test_site_update_is_minus_lr_times_the_gradient_and_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = small_cnn()
    (image, label), = images(1, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diff = site_update(model, image, label, lr=0.01)
    model.zero_grad()
    nn.functional.cross_entropy(model(image), torch.tensor([label])).backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(diff[name], -0.01 * p.grad.numpy(), rtol=1e-4, atol=1e-8)
        assert torch.equal(model.state_dict()[name], before[name])
    # iDLG's premise: only the true class has a negative output-bias gradient
    assert int(np.argmin(-diff["7.bias"])) == label


def test_filters_as_the_attacker_sees_them():
    torch.manual_seed(0)
    model = small_cnn()
    (image, label), = images(1, seed=0)
    diff = site_update(model, image, label, lr=0.01)
    kept = apply_filter(PrivacySettings(kind="exclude", exclude_vars=r"^0\."), diff)
    assert "0.weight" not in kept and "0.bias" not in kept and "2.weight" in kept
    sparse = apply_filter(PrivacySettings(kind="percentile", percentile=90, gamma=0.01), diff)
    total = sum(v.size for v in sparse.values())
    assert abs(sum(np.count_nonzero(v) for v in sparse.values()) / total - 0.10) < 0.01
    assert max(np.abs(v).max() for v in sparse.values()) <= 0.01 + 1e-9
