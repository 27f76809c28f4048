"""IOP-FL inside personalisation: the private model each site keeps (never sent).

Reference (``federated/client.py``): after training the received global model for one epoch to theta_k^t (what
the site sends), the site updates its private model

    p_k^t = alpha * p_k^{t-1} + (1 - alpha) * theta_k^t,   p_k^1 = theta_k^1,   alpha = 0.1.

Since theta_k^t = theta_g^{t-1} + local update, p_k accumulates the global and the local updates (the abstract's
"accumulating both global and local gradients").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["personalised_update"]


def personalised_update(
    previous: Mapping[str, torch.Tensor] | None, local: Mapping[str, torch.Tensor], alpha: float = 0.1
) -> dict[str, torch.Tensor]:
    """Return the new personalised state ``alpha * previous + (1 - alpha) * local`` (``local`` when no previous).

    Args:
        previous: the site's personalised state of the last round, or None in the first round.
        local: the state after this round's local training (theta_k^t).
        alpha: weight of the previous personalised state, in [0, 1).

    Tensors are cloned (the reference aliases the live state_dict in its first round, a bug). Integer tensors
    (BatchNorm's ``num_batches_tracked``) cannot be blended and take the local value.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
    if previous is None:
        return {k: v.detach().clone() for k, v in local.items()}
    if set(previous) != set(local):
        diff = sorted(set(previous) ^ set(local))
        raise KeyError(f"personalised and local states differ in keys {diff[:5]}")
    out = {}
    for k, v in local.items():
        v = v.detach()
        if torch.is_floating_point(v):
            out[k] = alpha * previous[k].to(v) + (1.0 - alpha) * v
        else:
            out[k] = v.clone()
    return out
