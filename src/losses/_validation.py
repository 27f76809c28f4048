"""Input checks shared by the FedICRA losses (errors name the argument and the offending value)."""

from __future__ import annotations

import torch


def check_bchw(name: str, t: torch.Tensor) -> None:
    """Raise unless ``t`` is a finite floating-point (B, C, H, W) tensor."""
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got shape {tuple(getattr(t, 'shape', ()))}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
