import pytest
import torch

from src.losses.latent_masking import (
    MASK_SCHEMES,
    apply_scores_mask,
    latent_code_gradient,
    mask_latent_code,
    random_channel_dropout,
    targeted_channel_mask,
    targeted_spatial_mask,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _channel_grad() -> torch.Tensor:
    """(2, 6, 2, 2) gradient with hand-chosen channel means.

    Sample 0 means: [0.1, 3.0, -9.0, 2.0, 0.5, -0.2] -> top-3 signed: channels 1, 3, 4 (channel 2 has the largest
    |g| but a negative sign, so it must stay). Sample 1 means: [5, -1, 4, 0, -7, 1] -> top-3: channels 0, 2, 5.
    Values vary over (h, w) but each channel's mean is the stated one.
    """
    means = torch.tensor([[0.1, 3.0, -9.0, 2.0, 0.5, -0.2], [5.0, -1.0, 4.0, 0.0, -7.0, 1.0]])
    wiggle = torch.tensor([[1.0, -1.0], [2.0, -2.0]])  # zero mean
    return means[:, :, None, None] + wiggle


@pytest.mark.parametrize("soft", [False, True])
def test_channel_mask_hits_exactly_the_top_signed_channels(soft):
    z = torch.rand(2, 6, 2, 2) + 1.0
    masked, mask = targeted_channel_mask(z, _channel_grad(), fraction=0.5, soft=soft, generator=_gen())
    expected = torch.tensor([[False, True, False, True, True, False], [True, False, True, False, False, True]])
    mask2d = mask[:, :, 0, 0]
    assert mask.shape == (2, 6, 1, 1)
    assert torch.equal(mask2d[~expected], torch.ones(int((~expected).sum())))
    if soft:
        assert ((mask2d[expected] >= 0) & (mask2d[expected] < 0.5)).all()
        assert mask2d[expected].unique().numel() == 6  # one factor per masked channel and sample
    else:
        assert torch.equal(mask2d[expected], torch.zeros(6))
    torch.testing.assert_close(masked, z * mask)


@pytest.mark.parametrize("soft", [False, True])
def test_spatial_mask_hits_exactly_the_top_signed_positions(soft):
    # (1, 3, 3, 3) code; channel-mean gradient per position, hand-chosen; fraction 0.34 -> k = floor(9 * 0.34) = 3
    pos_means = torch.tensor([[0.0, 4.0, -10.0], [1.0, 0.5, 3.0], [-2.0, 2.0, 0.1]])
    per_channel = torch.tensor([1.0, -3.0, 2.0])  # zero mean over channels
    grad = pos_means[None, None] + per_channel[None, :, None, None]
    z = torch.rand(1, 3, 3, 3) + 1.0
    masked, mask = targeted_spatial_mask(z, grad, fraction=0.34, soft=soft, generator=_gen())
    expected = torch.tensor([[False, True, False], [False, False, True], [False, True, False]])
    assert mask.shape == (1, 1, 3, 3)
    m = mask[0, 0]
    assert torch.equal(m[~expected], torch.ones(6))
    if soft:
        assert ((m[expected] >= 0) & (m[expected] < 0.5)).all()
    else:
        assert torch.equal(m[expected], torch.zeros(3))
    torch.testing.assert_close(masked, z * mask)


def test_zero_fraction_masks_nothing():
    z = torch.rand(2, 6, 2, 2)
    masked, mask = targeted_channel_mask(z, _channel_grad(), fraction=0.0, soft=False)
    assert torch.equal(mask, torch.ones_like(mask)) and torch.equal(masked, z)


def test_apply_scores_mask_count_and_k_bounds():
    scores = torch.randn(3, 10, 1, 1)
    _, mask = apply_scores_mask(torch.ones(3, 10, 2, 2), scores, k=4, soft=False)
    assert torch.equal((mask == 0).sum(dim=(1, 2, 3)), torch.tensor([4, 4, 4]))
    with pytest.raises(ValueError, match=r"k must be in \[0, 10\], got 11"):
        apply_scores_mask(torch.ones(3, 10, 2, 2), scores, k=11, soft=False)


def test_random_channel_dropout_rescales_and_is_seeded():
    z = torch.rand(4, 16, 3, 3)
    masked, mask = random_channel_dropout(z, p=0.5, generator=_gen(3))
    assert mask.shape == (4, 16, 1, 1)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
    assert 0 < (mask == 0).sum() < mask.numel()
    torch.testing.assert_close(masked, z * mask)
    again, _ = random_channel_dropout(z, p=0.5, generator=_gen(3))
    assert torch.equal(masked, again)


def test_latent_code_gradient_matches_analytic_value():
    # decoder out = w * z, loss = sum(out^2) / 2 -> dL/dz = w^2 * z
    z = torch.randn(2, 3, 2, 2)
    w = torch.randn(2, 3, 2, 2)
    grad = latent_code_gradient(z, lambda c: w * c, lambda out: (out**2).sum() / 2)
    torch.testing.assert_close(grad, w * w * z)
    assert z.grad is None


def test_mask_latent_code_targeted_uses_decoder_gradient_and_signed_order():
    # decoder: elementwise scale, loss = sum -> grad = scale; masked channels must be a top-k prefix of the scale
    scale = torch.tensor([3.0, -8.0, 1.0, 6.0, -1.0, 2.0, 0.0, 5.0])[None, :, None, None].expand(1, 8, 2, 2)
    z = torch.rand(1, 8, 2, 2) + 1.0
    order = [3, 7, 0, 5, 2, 6, 4, 1]  # descending signed scale
    seen_k = set()
    for seed in range(12):
        masked, mask, scheme = mask_latent_code(
            z, "channel", lambda c: c * scale, lambda out: out.sum(), max_fraction=0.5, soft=False,
            generator=_gen(seed),
        )
        assert scheme == "channel"
        dropped = [c for c in range(8) if mask[0, c, 0, 0] == 0]
        k = len(dropped)
        assert k <= 4 and sorted(dropped) == sorted(order[:k])
        seen_k.add(k)
        assert not masked.requires_grad
    assert len(seen_k) > 1  # the fraction is random per call


def test_mask_latent_code_random_picks_every_scheme_and_is_reproducible():
    z = torch.rand(2, 8, 2, 2)
    decoder, loss = (lambda c: c * 2.0), (lambda out: out.sum())
    schemes = {mask_latent_code(z, "random", decoder, loss, generator=_gen(s))[2] for s in range(30)}
    assert schemes == set(MASK_SCHEMES)
    a = mask_latent_code(z, "random", decoder, loss, generator=_gen(7))
    b = mask_latent_code(z, "random", decoder, loss, generator=_gen(7))
    assert a[2] == b[2] and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_inputs():
    z = torch.rand(1, 4, 2, 2)
    with pytest.raises(ValueError, match="scheme must be one of .* got 'cutout'"):
        mask_latent_code(z, "cutout")
    with pytest.raises(ValueError, match="needs decoder and loss_fn"):
        mask_latent_code(z, "spatial")
    with pytest.raises(ValueError, match="'random' may be targeted and needs decoder and loss_fn"):
        mask_latent_code(z, "random")
    with pytest.raises(ValueError, match=r"z must be \(B, C, h, w\), got shape \(4, 2, 2\)"):
        random_channel_dropout(z[0])
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        random_channel_dropout(torch.ones(1, 4, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="z contains NaN"):
        targeted_channel_mask(torch.full((1, 4, 2, 2), float("nan")), z, 0.5)
    with pytest.raises(ValueError, match=r"grad must have the shape of z \(1, 4, 2, 2\), got \(1, 4, 1, 1\)"):
        targeted_spatial_mask(z, torch.ones(1, 4, 1, 1), 0.5)
    with pytest.raises(ValueError, match=r"fraction must be a number in \[0, 1\], got 1.5"):
        targeted_channel_mask(z, z, 1.5)
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\), got 1.0"):
        random_channel_dropout(z, p=1.0)
    with pytest.raises(ValueError, match=r"max_fraction must be a number in \[0, 1\], got -0.1"):
        mask_latent_code(z, "dropout", max_fraction=-0.1)
