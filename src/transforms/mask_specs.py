"""The k-space mask types and FedMRI's per-site mask settings as plain data (no torch, no MONAI).

Kept apart from :mod:`src.transforms.kspace_masks` (which builds the masks and needs torch/MONAI) so that a job's
``--help`` and its option checks need no heavy import; ``kspace_masks`` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MASK_TYPES", "ACCELERATION_RTOL", "CENTER_FRACTION_ATOL", "SiteMaskSpec", "FEDMRI_SITE_MASKS"]

MASK_TYPES = ("equispaced", "random", "radial", "random2d")
ACCELERATION_RTOL = {"equispaced": 0.06, "random": 0.02, "radial": 0.035, "random2d": 0.005}
CENTER_FRACTION_ATOL = 0.02


@dataclass(frozen=True)
class SiteMaskSpec:
    """One site's fixed mask: type, acceleration, centre fraction and seed."""

    mask_type: str
    acceleration: float
    center_fraction: float
    seed: int


# The paper's main setting (figure); centre fractions are not reported: 0.08 for 1-D (fastMRI's value at 4x) and
# 0.04 / 0.08 for the 2-D masks are our choice. Seeds are fixed per site so every run uses the same masks.
FEDMRI_SITE_MASKS: tuple[SiteMaskSpec, ...] = (
    SiteMaskSpec("equispaced", 3.0, 0.08, seed=42),  # fastMRI: 1-D uniform 3x
    SiteMaskSpec("random", 5.0, 0.08, seed=43),  # BraTS: 1-D Cartesian random 5x
    SiteMaskSpec("radial", 4.0, 0.04, seed=44),  # SMS: 2-D radial 4x
    SiteMaskSpec("random2d", 6.0, 0.08, seed=45),  # uMR: 2-D random 6x
)
