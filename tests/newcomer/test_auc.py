"""MedNIST AUC: the macro mean over the classes it is defined for, not NaN when a class is missing."""

from __future__ import annotations

import math

import torch

from src.learners.classification import macro_auc_where_defined


def _onehot(labels, n=6):
    return torch.nn.functional.one_hot(torch.tensor(labels), n)


def test_perfect_scores_give_one_even_with_absent_classes():
    labels = [0, 0, 1, 1, 2, 2]  # classes 3-5 absent: MONAI's macro AUC would be NaN
    probs = _onehot(labels).float() * 0.9 + 0.01
    assert macro_auc_where_defined(probs, _onehot(labels)) == 1.0


def test_matches_the_hand_computed_mean_over_defined_classes():
    labels = [0, 1, 0, 1]
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    # class 0: positives {0.9, 0.4} vs negatives {0.2, 0.7}: 3 of 4 pairs ranked right -> 0.75; class 1 likewise
    assert math.isclose(macro_auc_where_defined(probs, _onehot(labels, 2)), 0.75)


def test_nan_only_when_no_class_is_defined():
    assert math.isnan(macro_auc_where_defined(torch.ones(3, 2) / 2, _onehot([0, 0, 0], 2)))
