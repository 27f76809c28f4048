"""Per-structure Dice and HD95 of one 3-D cardiac volume (labels 0 BG, 1 LV, 2 MYO, 3 RV).

The paper reports Dice per structure per subject volume (the 3-D stack of a frame's slices); HD95 is MONAI's
95th-percentile Hausdorff distance in millimetres (``spacing``). A structure absent from both prediction and label
scores Dice 1 and HD95 0; present in only one of them, HD95 is undefined (NaN, left out of means and counted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["STRUCTURES", "mean_scores", "volume_scores"]

STRUCTURES = {"lv": 1, "myo": 2, "rv": 3}


def volume_scores(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict:
    """``{"dice_lv", "dice_myo", "dice_rv", "dice", "hd95_lv", ..., "hd95"}`` of one (H, W, Z) volume."""
    from monai.metrics import compute_hausdorff_distance

    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 3:
        raise ValueError(f"pred and label must be the same (H, W, Z) shape, got {pred.shape} and {label.shape}")
    out: dict[str, float] = {}
    for name, value in STRUCTURES.items():
        p, t = pred == value, label == value
        denom = p.sum() + t.sum()
        out[f"dice_{name}"] = 1.0 if denom == 0 else float(2.0 * (p & t).sum() / denom)
        if not p.any() and not t.any():
            out[f"hd95_{name}"] = 0.0
        elif p.any() != t.any():
            out[f"hd95_{name}"] = float("nan")
        else:
            hd = compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None],
                                            percentile=95, spacing=list(spacing))
            out[f"hd95_{name}"] = float(hd.item())
    out["dice"] = float(np.mean([out[f"dice_{n}"] for n in STRUCTURES]))
    hds = [out[f"hd95_{n}"] for n in STRUCTURES if np.isfinite(out[f"hd95_{n}"])]
    out["hd95"] = float(np.mean(hds)) if hds else float("nan")
    return out


def mean_scores(per_volume: Iterable[Mapping[str, float]], prefix: str) -> dict[str, float]:
    """Means over volumes (NaN HD95 left out; ``{prefix}_hd95_undefined`` counts them) as ``{prefix}_<metric>``."""
    rows = list(per_volume)
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        values = np.array([r[key] for r in rows], dtype=float)
        finite = values[np.isfinite(values)]
        out[f"{prefix}_{key}"] = float(finite.mean()) if finite.size else float("nan")
    out[f"{prefix}_hd95_undefined"] = float(sum(not np.isfinite(r["hd95_lv"]) or not np.isfinite(r["hd95_myo"])
                                               or not np.isfinite(r["hd95_rv"]) for r in rows))
    return out
