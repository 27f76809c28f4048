"""FedMRI weighted contrastive regulariser: hand-computed values, gradients, mean variant, schedule, bad input."""

import pytest
import torch

from src.losses.weighted_contrastive import contrastive_is_active, mean_state_dict, weighted_contrastive_loss


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.fixture()
def tiny():
    local = {"a": _t([1.0, 2.0]).requires_grad_(), "b": _t([[0.5]]).requires_grad_()}
    positive = {"a": _t([0.0, 2.0]), "b": _t([[0.0]])}
    negatives = [{"a": _t([1.0, 1.0]), "b": _t([[0.5]])}, {"a": _t([3.0, 4.0]), "b": _t([[-0.5]])}]
    return local, positive, negatives


def test_exact_form_matches_hand_computed_value(tiny):
    local, positive, negatives = tiny
    # numerator |1-0| + |2-2| + |0.5-0| = 1.5; denominators: (0 + 1 + 0) + (2 + 2 + 1) = 6
    loss = weighted_contrastive_loss(local, positive, negatives)
    assert loss.item() == pytest.approx(1.5 / (6 + 1e-14), abs=1e-15)


def test_gradient_matches_hand_derivation(tiny):
    local, positive, negatives = tiny
    weighted_contrastive_loss(local, positive, negatives).backward()
    # d(N/D) = sign(x - g) / D - N * sum_j sign(x - n_j) / D^2 with N = 1.5, D = 6
    expected_a = [1 / 6 - 1.5 * (0 - 1) / 36, 0 / 6 - 1.5 * (1 - 1) / 36]
    expected_b = [[1 / 6 - 1.5 * (0 + 1) / 36]]
    torch.testing.assert_close(local["a"].grad, _t(expected_a))
    torch.testing.assert_close(local["b"].grad, _t(expected_b))
    assert all(t.grad is None for t in positive.values())


def test_keys_restrict_the_comparison(tiny):
    local, positive, negatives = tiny
    loss = weighted_contrastive_loss(local, positive, negatives, keys=["a"])
    assert loss.item() == pytest.approx(1.0 / (1.0 + 4.0))


def test_mean_variant_matches_hand_value_and_bounds_the_exact_form(tiny):
    local, positive, negatives = tiny
    mean_negative = mean_state_dict(negatives)
    torch.testing.assert_close(mean_negative["a"], _t([2.0, 2.5]))
    # |1-2| + |2-2.5| + |0.5-0| = 2; denominator 2 * 2 = 4
    loss = weighted_contrastive_loss(local, positive, [mean_negative], negative_mode="mean", num_negatives=2)
    assert loss.item() == pytest.approx(1.5 / 4)
    torch.manual_seed(0)
    for _ in range(5):
        shapes = {"w": (3, 4), "v": (5,)}
        local = {k: torch.randn(s) for k, s in shapes.items()}
        positive = {k: torch.randn(s) for k, s in shapes.items()}
        negatives = [{k: torch.randn(s) for k, s in shapes.items()} for _ in range(4)]
        exact = weighted_contrastive_loss(local, positive, negatives)
        cheap = weighted_contrastive_loss(
            local, positive, [mean_state_dict(negatives)], negative_mode="mean", num_negatives=4
        )
        assert cheap >= exact  # triangle inequality: N * ||x - mean|| <= sum_j ||x - n_j||


def test_matches_reference_style_loop_on_a_module():
    torch.manual_seed(1)
    make = lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 1, 1))  # noqa: E731
    model, server, prev = make(), make(), [make() for _ in range(3)]
    posi = sum(torch.norm(p - q, p=1) for p, q in zip(model.parameters(), server.parameters()))
    nega = sum(torch.norm(p - q, p=1) for other in prev for p, q in zip(model.parameters(), other.parameters()))
    loss = weighted_contrastive_loss(
        dict(model.named_parameters()),
        {k: v.detach() for k, v in server.named_parameters()},
        [{k: v.detach() for k, v in m.named_parameters()} for m in prev],
    )
    torch.testing.assert_close(loss, posi / (nega + 1e-14))


def test_schedule_skips_first_round_and_first_minibatch():
    assert not contrastive_is_active(0, 5)
    assert not contrastive_is_active(3, 0)
    assert contrastive_is_active(1, 1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"negative_mode": "median"}, ValueError, "negative_mode must be one of.*'median'"),
        ({"negative_mode": "mean", "num_negatives": 2}, ValueError, "exactly one \\(mean\\) negative, got 2"),
        ({"keys": ["a", "zz"]}, KeyError, "positive lacks encoder keys \\['zz'\\]"),
        ({"keys": []}, ValueError, "keys must name at least one"),
        ({"eps": 0.0}, ValueError, "eps must be positive, got 0.0"),
    ],
)
def test_bad_options_are_rejected(tiny, kwargs, error, match):
    local, positive, negatives = tiny
    with pytest.raises(error, match=match):
        weighted_contrastive_loss(local, positive, negatives, **kwargs)


def test_bad_tensors_are_rejected(tiny):
    local, positive, negatives = tiny
    with pytest.raises(ValueError, match=r"local\['a'\] has shape \(3,\), expected \(2,\)"):
        weighted_contrastive_loss({**local, "a": _t([1.0, 2.0, 3.0])}, positive, negatives)
    with pytest.raises(ValueError, match=r"negatives\[1\]\['b'\] contains NaN"):
        weighted_contrastive_loss(local, positive, [negatives[0], {**negatives[1], "b": _t([[float("nan")]])}])
    with pytest.raises(TypeError, match=r"positive\['a'\] must be a floating tensor, got torch.int64"):
        weighted_contrastive_loss(local, {**positive, "a": torch.tensor([0, 2])}, negatives)
    with pytest.raises(KeyError, match=r"negatives\[0\] lacks encoder keys \['b'\]"):
        weighted_contrastive_loss(local, positive, [{"a": _t([1.0, 1.0])}])
    with pytest.raises(ValueError, match="negatives must be a non-empty sequence"):
        weighted_contrastive_loss(local, positive, [])
    with pytest.raises(ValueError, match="negatives must be a non-empty sequence of mappings, got dict"):
        weighted_contrastive_loss(local, positive, negatives[0])
    with pytest.raises(ValueError, match="num_negatives must be a positive int.*got None"):
        weighted_contrastive_loss(local, positive, negatives[:1], negative_mode="mean")
    with pytest.raises(ValueError, match="round_index must be a non-negative int, got -1"):
        contrastive_is_active(-1, 0)
    with pytest.raises(ValueError, match="state_dicts must be a non-empty sequence"):
        mean_state_dict([])
