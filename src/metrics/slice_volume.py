"""Segmentation scores of 2-D slice predictions, regrouped into 3-D volumes.

Headline: foreground Dice and HD95 per 3-D volume (MONAI ``DiceMetric`` / ``HausdorffDistanceMetric``),
averaged over volumes. For comparability with the IOP-FL reference we also report its 2-D score
(``DiceLoss.dice_coef``): per slice, per class {background, prostate} 2|P&G| / (|P|+|G|+1e-5), averaged over
classes and slices; including the background inflates it. The reference averages per batch; we average per slice.
HD95 is in voxel units of the stored slices (in-plane pixels, one slice along z). A volume whose prediction or
label is empty has no surface distance: it gets the volume's diagonal (the worst possible value) instead of inf.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

__all__ = ["dice_2d_reference", "volume_scores", "per_volume_scores", "score_slices"]


def dice_2d_reference(pred: np.ndarray, label: np.ndarray, smooth: float = 1e-5) -> float:
    """The reference's per-slice Dice over {bg, prostate}; ``pred``/``label`` (N, H, W) with values {0, 1}."""
    scores = []
    for cls in (0, 1):
        p, g = pred == cls, label == cls
        inter = (p & g).sum(axis=(1, 2))
        scores.append(2 * inter / (p.sum(axis=(1, 2)) + g.sum(axis=(1, 2)) + smooth))
    return float(np.mean(scores))


def _one_hot_volume(volume: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(volume, dtype=torch.long)
    return torch.stack([t == 0, t == 1]).float()[None]  # (1, 2, H, W, S)


def volume_scores(pred: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """(foreground Dice, HD95) of one volume; ``pred``/``label`` (H, W, S) with values {0, 1}."""
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {pred.shape} does not match label shape {label.shape}")
    p, g = _one_hot_volume(pred), _one_hot_volume(label)
    dice = DiceMetric(include_background=False, ignore_empty=False)(p, g).item()
    worst = float(np.sqrt(sum(n * n for n in pred.shape)))
    if not pred.any() or not label.any():
        return dice, worst
    hd = HausdorffDistanceMetric(include_background=False, percentile=95)(p, g).item()
    return dice, hd if np.isfinite(hd) else worst


def per_volume_scores(
    pred: np.ndarray, label: np.ndarray, cases: Sequence[str], slices: Sequence[int]
) -> dict[str, dict[str, float]]:
    """``{case: {"dice", "hd95", "dice2d"}}``: every volume's own scores, the units a paired comparison needs.

    Args:
        pred, label: (N, H, W) integer maps with values {0, 1}.
        cases, slices: each slice's case id and index within its volume (slices are ordered by index).
    """
    n = len(pred)
    if not (len(label) == len(cases) == len(slices) == n) or n == 0:
        raise ValueError(f"need as many (>0) labels, cases and slices as predictions ({n}), got "
                         f"{len(label)}, {len(cases)}, {len(slices)}")
    out = {}
    for case in sorted(set(cases)):
        idx = sorted((i for i in range(n) if cases[i] == case), key=lambda i: slices[i])
        p, g = np.stack([pred[i] for i in idx]), np.stack([label[i] for i in idx])
        d, h = volume_scores(np.moveaxis(p, 0, -1), np.moveaxis(g, 0, -1))
        out[case] = {"dice": d, "hd95": h, "dice2d": dice_2d_reference(p, g)}
    return out


def score_slices(
    pred: np.ndarray, label: np.ndarray, cases: Sequence[str], slices: Sequence[int], prefix: str = "val",
    per_volume: bool = False,
) -> dict:
    """Regroup slice predictions by case (ordered by slice index) and score them.

    Args:
        pred, label: (N, H, W) integer maps with values {0, 1}.
        cases, slices: each slice's case id and index within its volume.
        prefix: metric name prefix (``val``, ``test``, ``ood``).
        per_volume: also return ``"volumes"``: :func:`per_volume_scores` (for paired statistics).

    Returns ``{prefix}_dice`` (3-D foreground Dice, mean over volumes), ``{prefix}_hd95`` and
    ``{prefix}_dice2d`` (the reference's 2-D score over all slices).
    """
    volumes = per_volume_scores(pred, label, cases, slices)
    out = {
        f"{prefix}_dice": float(np.mean([v["dice"] for v in volumes.values()])),
        f"{prefix}_hd95": float(np.mean([v["hd95"] for v in volumes.values()])),
        f"{prefix}_dice2d": dice_2d_reference(pred, label),
    }
    if per_volume:
        out["volumes"] = volumes
    return out
