"""FedMRI weighted contrastive regulariser: hand-computed values, gradients, linear variant, schedule, bad input."""

import pytest
import torch

from src.losses.weighted_contrastive import (
    contrastive_is_active,
    mean_state_dict,
    summarize_negatives,
    weighted_contrastive_loss,
)


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


def test_summary_and_linear_variant_match_hand_values(tiny):
    local, positive, negatives = tiny
    summary = summarize_negatives(positive, negatives)
    # theta_g - n1 = a [-1, 1], b [-0.5]; theta_g - n2 = a [-3, -2], b [0.5]
    assert summary.distance.item() == pytest.approx(8.0)
    assert summary.sign_sum["a"].tolist() == [-2, 0] and summary.sign_sum["b"].tolist() == [[0]]
    assert summary.sign_sum["a"].dtype == torch.int8 and summary.nbytes() == 3 + 8
    # no element crossed a negative: D_lin = 8 + (-2 * 1) = 6 = exact denominator
    loss = weighted_contrastive_loss(local, positive, summary, negative_mode="linear")
    assert loss.item() == pytest.approx(1.5 / 6)
    # a[0] = 2 crosses n1's a[0] = 1: exact 2.5 / 6, linear 2.5 / (8 - 4)
    crossed = {"a": _t([2.0, 2.0]), "b": _t([[0.5]])}
    assert weighted_contrastive_loss(crossed, positive, negatives).item() == pytest.approx(2.5 / 6)
    assert weighted_contrastive_loss(crossed, positive, summary, negative_mode="linear").item() == pytest.approx(
        2.5 / 4
    )


def test_linear_variant_is_exact_near_the_global_and_an_upper_bound_far_away():
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 4), "v": (5,)}
    positive = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    negatives = [{k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()} for _ in range(4)]
    summary = summarize_negatives(positive, negatives)
    near = {
        k: (v + 1e-6 * torch.randn(v.shape, generator=gen, dtype=torch.float64)).requires_grad_()
        for k, v in positive.items()
    }
    exact = weighted_contrastive_loss(near, positive, negatives)
    linear = weighted_contrastive_loss(near, positive, summary, negative_mode="linear")
    torch.testing.assert_close(linear, exact, rtol=1e-12, atol=0)
    grad_exact = torch.autograd.grad(exact, list(near.values()))
    grad_linear = torch.autograd.grad(linear, list(near.values()))
    for g_e, g_l in zip(grad_exact, grad_linear):
        torch.testing.assert_close(g_l, g_e, rtol=1e-9, atol=1e-12)
    for _ in range(5):
        far = {k: v + 0.5 * torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in positive.items()}
        exact = weighted_contrastive_loss(far, positive, negatives)
        assert weighted_contrastive_loss(far, positive, summary, negative_mode="linear") >= exact


def test_mean_state_dict_is_the_uniform_average(tiny):
    _, _, negatives = tiny
    mean = mean_state_dict(negatives)
    torch.testing.assert_close(mean["a"], _t([2.0, 2.5]))
    torch.testing.assert_close(mean["b"], _t([[0.0]]))


def test_mean_negative_would_be_degenerate(tiny):
    """Why there is no mean-negative variant: the mean of last round's encoders is this round's global encoder."""
    local, _, negatives = tiny
    global_encoder = mean_state_dict(negatives)  # uniform FedMRI average, full participation
    loss = weighted_contrastive_loss(local, global_encoder, [global_encoder])
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert all(t.grad.abs().max() < 1e-12 for t in local.values())


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
        ({"negative_mode": "linear"}, TypeError, "expects a NegativeSummary.*got list"),
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
    with pytest.raises(KeyError, match=r"sign_sum lacks encoder keys \['b'\]"):
        summary = summarize_negatives(positive, negatives, keys=["a"])
        weighted_contrastive_loss(local, positive, summary, negative_mode="linear")
    with pytest.raises(ValueError, match=r"negatives\[0\]\['a'\] contains NaN"):
        summarize_negatives(positive, [{"a": _t([float("nan"), 0.0]), "b": _t([[0.0]])}])
    with pytest.raises(ValueError, match="round_index must be a non-negative int, got -1"):
        contrastive_is_active(-1, 0)
    with pytest.raises(ValueError, match="state_dicts must be a non-empty sequence"):
        mean_state_dict([])


def test_linear_denominator_is_bounded_where_the_tangent_reaches_zero():
    # review finding: theta_g = 0, negatives [1, 1] and [1, 0.5], theta = [1, 1]: exact 2 / 0.5 = 4, while the
    # tangent 3.5 - 2 - 2 = -0.5 made the clamped linear loss 2e14 (gradient ~1e16)
    positive = {"w": _t([0.0, 0.0])}
    negatives = [{"w": _t([1.0, 1.0])}, {"w": _t([1.0, 0.5])}]
    summary = summarize_negatives(positive, negatives)
    local = {"w": _t([1.0, 1.0]).requires_grad_()}
    exact = weighted_contrastive_loss(local, positive, negatives)
    assert exact.item() == pytest.approx(4.0)
    linear = weighted_contrastive_loss(local, positive, summary, negative_mode="linear")
    # the floor binds: 2 / (0.1 * 3.5)
    assert linear.item() == pytest.approx(2.0 / 0.35)
    (grad,) = torch.autograd.grad(linear, [local["w"]])
    assert torch.isfinite(grad).all() and grad.abs().max() < 10
    torch.testing.assert_close(grad, _t([1 / 0.35, 1 / 0.35]))
    # a looser floor gives a larger but still finite loss; an invalid floor is refused
    assert weighted_contrastive_loss(local, positive, summary, negative_mode="linear", linear_floor=0.01) < 1e3
    with pytest.raises(ValueError, match="linear_floor"):
        weighted_contrastive_loss(local, positive, summary, negative_mode="linear", linear_floor=0.0)


def test_linear_loss_stays_finite_along_a_long_path():
    gen = torch.Generator().manual_seed(1)
    positive = {"w": torch.randn(50, generator=gen, dtype=torch.float64)}
    negatives = [{"w": positive["w"] + 0.1 * torch.randn(50, generator=gen, dtype=torch.float64)} for _ in range(3)]
    summary = summarize_negatives(positive, negatives)
    direction = torch.randn(50, generator=gen, dtype=torch.float64)
    for scale in (0.0, 0.01, 0.1, 1.0, 10.0, 100.0):
        local = {"w": (positive["w"] + scale * direction).requires_grad_()}
        linear = weighted_contrastive_loss(local, positive, summary, negative_mode="linear")
        (grad,) = torch.autograd.grad(linear, [local["w"]])
        numerator = (scale * direction).abs().sum().item()
        # never above num / (0.1 * D0), never below the exact loss (all three terms are <= the exact denominator
        # unless the floor binds, and then it is the floor)
        assert linear.item() <= numerator / (0.1 * summary.distance.item()) * (1 + 1e-12) + 1e-300
        assert linear.item() >= weighted_contrastive_loss(local, positive, negatives).item() * (1 - 1e-12) or (
            linear.item() == pytest.approx(numerator / (0.1 * summary.distance.item())))
        assert torch.isfinite(grad).all() and grad.abs().max() < 1e3
