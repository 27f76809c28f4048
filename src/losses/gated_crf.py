"""Gated CRF loss (Obukhov et al., 2019) with a Potts compatibility, as FedICRA uses it.

``L = sum_i sum_{j in window(i), j != i} K_ij (1 - P_i . P_j) / (B H W)`` with the Gaussian kernel
``K_ij = exp(-|xy_i - xy_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))`` over a
``(2r+1) x (2r+1)`` window (FedICRA: r = 5, sigma_xy = 6 px, sigma_rgb = 0.1 on the raw [0, 1] image; all pixels,
no gating masks).

Why not the reference: it unfolds both the kernel and the probabilities into ``B x C x 121 x H x W`` tensors
(~1.5 GB at B=12, C=3, 256^2). Here one ``torch.autograd.Function`` loops over the 60 offsets of a half window
(``K`` and the Potts term are symmetric in ``i, j``, so each unordered pair is visited once and counted twice) on
shifted views; the backward pass recomputes each kernel slice. Memory is O(B C H W).

Deviation from the reference, on purpose: the reference zero-pads the unfolded features, so window positions
outside the image contribute kernel values computed from a zero "pixel" to the ``sum K`` term. That term does not
depend on the prediction, so it only shifts the loss value by a constant; here out-of-image neighbours are simply
absent (the loss is exactly the sum over in-image pairs). Gradients are identical.
"""

from __future__ import annotations

import torch

from src.losses._validation import check_bchw

__all__ = ["gated_crf_loss", "GatedCRFLoss"]


def _half_window_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) with dy > 0, or dy == 0 and dx > 0: one per unordered neighbour pair."""
    return [(dy, dx) for dy in range(0, radius + 1) for dx in range(-radius, radius + 1) if dy > 0 or dx > 0]


def _pair_slices(dy: int, dx: int, height: int, width: int) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    x0, x1 = max(0, -dx), min(width, width - dx)
    if dy >= height or x1 <= x0:
        return None
    return (slice(0, height - dy), slice(x0, x1)), (slice(dy, height), slice(x0 + dx, x1 + dx))


def _kernel(image: torch.Tensor, sa, sb, dy: int, dx: int, sigma_xy: float, sigma_rgb: float) -> torch.Tensor:
    diff = image[:, :, sa[0], sa[1]] - image[:, :, sb[0], sb[1]]
    spatial = (dy * dy + dx * dx) / (2.0 * sigma_xy**2)
    return torch.exp(-spatial - (diff * diff).sum(1) / (2.0 * sigma_rgb**2))


class _GatedCRFPotts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs, image, radius, sigma_xy, sigma_rgb):  # noqa: D401
        batch, _, height, width = probs.shape
        total = probs.new_zeros((), dtype=torch.float64)
        with torch.no_grad():
            for dy, dx in _half_window_offsets(radius):
                slices = _pair_slices(dy, dx, height, width)
                if slices is None:
                    continue
                sa, sb = slices
                k = _kernel(image, sa, sb, dy, dx, sigma_xy, sigma_rgb)
                dot = (probs[:, :, sa[0], sa[1]] * probs[:, :, sb[0], sb[1]]).sum(1)
                total += (k * (1.0 - dot)).sum(dtype=torch.float64)
        ctx.save_for_backward(probs, image)
        ctx.params = (radius, sigma_xy, sigma_rgb)
        return (2.0 * total / (batch * height * width)).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        probs, image = ctx.saved_tensors
        radius, sigma_xy, sigma_rgb = ctx.params
        batch, _, height, width = probs.shape
        grad = torch.zeros_like(probs)
        with torch.no_grad():
            for dy, dx in _half_window_offsets(radius):
                slices = _pair_slices(dy, dx, height, width)
                if slices is None:
                    continue
                sa, sb = slices
                k = _kernel(image, sa, sb, dy, dx, sigma_xy, sigma_rgb).unsqueeze(1)
                grad[:, :, sa[0], sa[1]] -= k * probs[:, :, sb[0], sb[1]]
                grad[:, :, sb[0], sb[1]] -= k * probs[:, :, sa[0], sa[1]]
            grad *= grad_output * 2.0 / (batch * height * width)
        return grad, None, None, None, None




def gated_crf_loss(
    probs: torch.Tensor, image: torch.Tensor, radius: int = 5, sigma_xy: float = 6.0, sigma_rgb: float = 0.1
) -> torch.Tensor:
    """Potts gated CRF loss of softmax probabilities guided by the input image.

    Args:
        probs: (B, C, H, W) class probabilities (softmax of the main logits); gradients flow into it.
        image: (B, Ci, H, W) guide image at the same resolution (raw intensities, [0, 1]); no gradient.
        radius: window radius (5 -> 11 x 11 window, centre excluded).
        sigma_xy: spatial bandwidth in pixels.
        sigma_rgb: intensity bandwidth.

    Returns:
        scalar loss, normalised by ``B * H * W``.
    """
    check_bchw("probs", probs)
    check_bchw("image", image)
    if image.shape[0] != probs.shape[0] or image.shape[2:] != probs.shape[2:]:
        raise ValueError(
            f"image must match probs in batch and spatial size {(probs.shape[0], *probs.shape[2:])}, "
            f"got {(image.shape[0], *image.shape[2:])}"
        )
    if not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be a positive int, got {radius!r}")
    for name, value in (("sigma_xy", sigma_xy), ("sigma_rgb", sigma_rgb)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    return _GatedCRFPotts.apply(probs, image.detach().to(probs.dtype), radius, float(sigma_xy), float(sigma_rgb))


class GatedCRFLoss(torch.nn.Module):
    """Module wrapper of :func:`gated_crf_loss` holding the kernel settings (FedICRA defaults)."""

    def __init__(self, radius: int = 5, sigma_xy: float = 6.0, sigma_rgb: float = 0.1) -> None:
        super().__init__()
        self.radius, self.sigma_xy, self.sigma_rgb = radius, sigma_xy, sigma_rgb

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return gated_crf_loss(probs, image, self.radius, self.sigma_xy, self.sigma_rgb)
