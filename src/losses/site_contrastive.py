"""Site-contrastive loss of FedICRA's channel selection: push the own site's gate away from the other sites' gates.

``L_lc = -(1 / (K - 1)) * sum_{k != i} MSE(h_i, stopgrad(h_k))``, where ``h_k`` is the channel gate of the same
batch under site ``k``'s one-hot code. Gates lie in (0, 1), so each MSE is in [0, 1) and ``L_lc`` in (-1, 0].

Deviations from the reference, on purpose:

- The reference re-runs the WHOLE network once per other site (in train mode: fresh dropout, BN statistics updated
  four extra times). Only the gate depends on the site code, so here only the gate is re-run on the cached
  (pre-gate) bottleneck of the main forward pass: same encoder features, no extra BN updates, ~1000x cheaper.
- The reference's ``if not emb_idx`` maps site 0 to the client's own site; here every index is a site.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.models.unet_multihead import SiteChannelSelection

__all__ = ["site_contrastive_loss"]


def site_contrastive_loss(
    channel_selection: SiteChannelSelection, bottleneck: torch.Tensor, own_gate: torch.Tensor, site_index: int
) -> torch.Tensor:
    """Negative mean squared distance between the own gate and every other site's (detached) gate.

    Args:
        channel_selection: the model's :class:`SiteChannelSelection` module.
        bottleneck: (B, C, h, w) encoder output before the gate (``MultiHeadOutput.bottleneck``).
        own_gate: (B, C, 1, 1) gate of the main pass under ``site_index`` (``MultiHeadOutput.gate``), with graph.
        site_index: this client's site in ``[0, K)``.

    Returns:
        scalar in (-1, 0]; gradients flow only through ``own_gate``.
    """
    if not isinstance(channel_selection, SiteChannelSelection):
        raise TypeError(f"channel_selection must be a SiteChannelSelection, got {type(channel_selection).__name__}")
    num_sites = channel_selection.num_sites
    if isinstance(site_index, bool) or not isinstance(site_index, int) or not 0 <= site_index < num_sites:
        raise ValueError(f"site_index must be an int in [0, {num_sites}), got {site_index!r}")
    for name, t in (("bottleneck", bottleneck), ("own_gate", own_gate)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating (B, C, h, w) tensor, got {getattr(t, 'shape', t)!r}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    expected = (bottleneck.shape[0], bottleneck.shape[1], 1, 1)
    if tuple(own_gate.shape) != expected:
        raise ValueError(f"own_gate must have shape {expected}, got {tuple(own_gate.shape)}")
    with torch.no_grad():
        others = [channel_selection.gate(bottleneck, k) for k in range(num_sites) if k != site_index]
    return -torch.stack([F.mse_loss(own_gate, h) for h in others]).mean()
