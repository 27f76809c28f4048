import pytest
import torch

from src.personalisation.iopfl import personalised_update


def test_update_rule_matches_hand_computed_values():
    prev = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    local = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    new = personalised_update(prev, local, alpha=0.1)
    # 0.1 * [1, 2] + 0.9 * [3, 6] = [2.8, 5.6]; the integer counter takes the local value
    assert torch.allclose(new["w"], torch.tensor([2.8, 5.6]))
    assert new["n"].item() == 7


def test_two_rounds_accumulate_as_the_reference():
    t1, t2 = {"w": torch.tensor([10.0])}, {"w": torch.tensor([20.0])}
    p1 = personalised_update(None, t1, 0.25)
    p2 = personalised_update(p1, t2, 0.25)
    assert p2["w"].item() == pytest.approx(0.25 * 10 + 0.75 * 20)


def test_first_round_copies_instead_of_aliasing():
    local = {"w": torch.zeros(2)}
    p = personalised_update(None, local)
    local["w"] += 1.0
    assert p["w"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        personalised_update(None, {"w": torch.zeros(1)}, alpha)


def test_key_mismatch():
    with pytest.raises(KeyError, match="differ in keys"):
        personalised_update({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
