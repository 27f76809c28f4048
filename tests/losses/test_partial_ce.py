"""Partial cross-entropy ignores exactly the ignore index."""

import math

import pytest
import torch

from src.losses.partial_ce import partial_cross_entropy


def test_matches_hand_computed_mean_over_labelled_pixels():
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 0] = math.log(3.0)  # p(class 0) = 3/4 at pixel 0
    labels = torch.tensor([[[0, 1, 2]]])  # pixel 2 unlabelled (ignore = C = 2)
    expected = (-math.log(0.75) - math.log(0.5)) / 2
    assert partial_cross_entropy(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_ignored_pixels_get_no_gradient_and_labelled_ones_do():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[:, :2] = 3
    partial_cross_entropy(logits, labels).backward()
    grad_norm = logits.grad.abs().sum(1)
    assert (grad_norm[labels == 3] == 0).all()
    assert (grad_norm[labels != 3] > 0).all()


def test_changing_logits_at_ignored_pixels_leaves_loss_unchanged():
    torch.manual_seed(1)
    logits = torch.randn(1, 2, 5, 5)
    labels = torch.randint(0, 3, (1, 5, 5))
    other = logits.clone()
    other[:, :, labels[0] == 2] += 10.0
    assert partial_cross_entropy(logits, labels) == partial_cross_entropy(other, labels)


def test_fully_unlabelled_batch_gives_zero_not_nan():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = partial_cross_entropy(logits, torch.full((1, 3, 3), 2))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


def test_bad_inputs():
    logits = torch.randn(1, 2, 3, 3)
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="ignore_index must not be a class index in \\[0, 2\\), got 1"):
        partial_cross_entropy(logits, labels, ignore_index=1)
    with pytest.raises(ValueError, match="found 5"):
        partial_cross_entropy(logits, labels + 5)
    with pytest.raises(TypeError, match="labels must be an integer tensor, got dtype torch.float32"):
        partial_cross_entropy(logits, labels.float())
    with pytest.raises(ValueError, match=r"labels must have shape \(1, 3, 3\), got \(1, 3, 4\)"):
        partial_cross_entropy(logits, torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits contains NaN"):
        partial_cross_entropy(torch.full((1, 2, 3, 3), float("nan")), labels)
    with pytest.raises(ValueError, match="logits must be a \\(B, C, H, W\\) tensor"):
        partial_cross_entropy(torch.randn(2, 3, 3), labels)
