"""Partial cross-entropy: cross-entropy on the annotated pixels of a sparse label map only.

Weak labels (scribbles, points, blocks, boxes) mark most pixels as unlabelled with ``ignore_index``; FedICRA follows
WSL4MIS and uses ``ignore_index = C`` (the number of classes), so it can never collide with a class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["partial_cross_entropy", "check_sparse_labels"]


def check_sparse_labels(labels: torch.Tensor, num_classes: int, ignore_index: int, name: str = "labels") -> None:
    """Validate a sparse label map: integer dtype, values in ``[0, num_classes)`` or ``ignore_index``.

    Raises:
        ValueError: if ``ignore_index`` is a class index (it would silently drop that class) or a value is invalid.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index must not be a class index in [0, {num_classes}), got {ignore_index!r} "
            f"(FedICRA uses ignore_index = num_classes = {num_classes})"
        )
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        value = int(labels[bad][0])
        raise ValueError(
            f"{name} values must be in [0, {num_classes}) or ignore_index={ignore_index}, found {value!r}"
        )


def partial_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Mean cross-entropy over annotated pixels; 0 (with a graph) when no pixel is annotated.

    Args:
        logits: (B, C, H, W) raw scores.
        labels: (B, H, W) integer sparse labels; ``ignore_index`` marks unlabelled pixels.
        ignore_index: unlabelled value, default ``C``.

    Returns:
        scalar loss. ``torch.nn.functional.cross_entropy`` would return NaN when every pixel is ignored; an
        unlabelled batch (possible after rotation with ignore fill) should contribute nothing instead.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        raise ValueError(f"logits must be a (B, C, H, W) tensor, got {getattr(logits, 'shape', logits)!r}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contains NaN or infinite values")
    num_classes = logits.shape[1]
    ignore_index = num_classes if ignore_index is None else int(ignore_index)
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"labels must have shape {(logits.shape[0], *logits.shape[2:])}, got {tuple(getattr(labels, 'shape', ()))}"
        )
    check_sparse_labels(labels, num_classes, ignore_index)
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)
