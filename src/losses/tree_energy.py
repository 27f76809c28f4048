"""Multiscale tree energy loss (TEL, Liang et al., CVPR 2022) as FedICRA cascades it over three auxiliary heads.

1. Low-level tree: MST of the input image (a grey image is repeated to 3 channels, as the reference does, which
   triples the squared intensity distance); edge weights ``exp(-|I_i - I_j|^2 / 0.02)``; ``AS_0 = filter(P)`` with
   ``P = softmax(logits)``.
2. For each auxiliary head ``a_m`` (m = 1..3): upsample its logits bilinearly to H x W, MST on them, edge weights
   ``exp(-|a_i - a_j|^2)``, ``AS_m = filter_m(AS_{m-1})``.
3. ``L = weight * sum_{unlabelled pixels} sum_classes |P - AS_3| / #unlabelled`` (``weight`` = 0.1 in FedICRA).

Nothing is detached except the trees themselves (MSTs are not differentiable): gradients reach ``P`` directly and
through every filter input, and reach the auxiliary heads only through the edge weights, their only training
signal. The filter is :func:`src.losses.tree_filter.tree_filter` (CPU, numba, one autograd node per filter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from src.losses._validation import check_bchw
from src.losses.tree_filter import build_grid_mst, tree_edge_weights, tree_filter

__all__ = ["MultiscaleTreeEnergyLoss", "multiscale_tree_energy_loss"]




def multiscale_tree_energy_loss(
    logits: torch.Tensor,
    image: torch.Tensor,
    aux_logits: Sequence[torch.Tensor],
    unlabeled_mask: torch.Tensor,
    weight: float = 0.1,
    image_sigma: float = 0.02,
    feature_sigma: float = 1.0,
) -> torch.Tensor:
    """Cascaded tree energy loss on the unlabelled pixels.

    Args:
        logits: (B, C, H, W) main-head logits.
        image: (B, 1 or 3, H, W) input image in [0, 1] (guide of the low-level tree; no gradient).
        aux_logits: auxiliary-head logits, each (B, C', h, w); upsampled to (H, W). May be empty (single-tree TEL).
        unlabeled_mask: (B, H, W) bool, True where the sparse label is the ignore index.
        weight: loss weight (0.1 in FedICRA).
        image_sigma: temperature of the image tree (0.02).
        feature_sigma: temperature of the auxiliary trees (1: the reference uses ``exp(-d)``).

    Returns:
        scalar loss; 0 (with a graph) when no pixel is unlabelled.
    """
    check_bchw("logits", logits)
    check_bchw("image", image)
    batch, _, height, width = logits.shape
    if image.shape[0] != batch or image.shape[2:] != logits.shape[2:]:
        raise ValueError(
            f"image must match logits in batch and spatial size {(batch, height, width)}, "
            f"got {(image.shape[0], *image.shape[2:])}"
        )
    if image.shape[1] not in (1, 3):
        raise ValueError(f"image must have 1 or 3 channels, got {image.shape[1]}")
    if not isinstance(unlabeled_mask, torch.Tensor) or unlabeled_mask.dtype != torch.bool:
        got = getattr(unlabeled_mask, "dtype", unlabeled_mask)
        raise TypeError(f"unlabeled_mask must be a bool tensor, got {got!r}")
    if tuple(unlabeled_mask.shape) != (batch, height, width):
        raise ValueError(f"unlabeled_mask must have shape {(batch, height, width)}, got {tuple(unlabeled_mask.shape)}")
    for i, aux in enumerate(aux_logits):
        check_bchw(f"aux_logits[{i}]", aux)
        if aux.shape[0] != batch:
            raise ValueError(f"aux_logits[{i}] must have batch size {batch}, got {aux.shape[0]}")

    probs = torch.softmax(logits, dim=1)
    guide = image.detach().to(probs.dtype)
    if guide.shape[1] == 1:
        guide = guide.repeat(1, 3, 1, 1)
    low_tree = build_grid_mst(guide)
    filtered = tree_filter(probs, tree_edge_weights(guide, low_tree, image_sigma), low_tree)
    for aux in aux_logits:
        aux_up = F.interpolate(aux, size=(height, width), mode="bilinear", align_corners=False)
        tree = build_grid_mst(aux_up)
        filtered = tree_filter(filtered, tree_edge_weights(aux_up, tree, feature_sigma), tree)

    mask = unlabeled_mask.unsqueeze(1).to(probs.dtype)
    count = unlabeled_mask.sum()
    energy = (mask * (probs - filtered).abs()).sum()
    if count == 0:
        return energy * 0.0
    return weight * energy / count


class MultiscaleTreeEnergyLoss(torch.nn.Module):
    """Module wrapper of :func:`multiscale_tree_energy_loss` holding the weight and temperatures."""

    def __init__(self, weight: float = 0.1, image_sigma: float = 0.02, feature_sigma: float = 1.0) -> None:
        super().__init__()
        for name, value in (("image_sigma", image_sigma), ("feature_sigma", feature_sigma)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if weight < 0:
            raise ValueError(f"weight must be non-negative, got {weight!r}")
        self.weight, self.image_sigma, self.feature_sigma = weight, image_sigma, feature_sigma

    def forward(
        self,
        logits: torch.Tensor,
        image: torch.Tensor,
        aux_logits: Sequence[torch.Tensor],
        unlabeled_mask: torch.Tensor,
    ) -> torch.Tensor:
        return multiscale_tree_energy_loss(
            logits, image, aux_logits, unlabeled_mask, self.weight, self.image_sigma, self.feature_sigma
        )
