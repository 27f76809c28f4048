"""Configuration of the FedMRI job and its baselines (single-coil MR reconstruction, four sites)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from src.config.base import LearnerConfig
from src.transforms.mask_specs import FEDMRI_SITE_MASKS, MASK_TYPES

ALGORITHMS = ("fedmri", "fedavg", "fedbn", "fedprox", "lg-fedavg", "local")
NEGATIVE_CHOICES = ("exact", "linear")

__all__ = ["FedMRIConfig", "ALGORITHMS", "NEGATIVE_CHOICES", "default_site_masks"]


def default_site_masks() -> dict[str, dict[str, Any]]:
    """The paper's main setting: site-1 1-D uniform 3x, site-2 1-D random 5x, site-3 radial 4x, site-4 2-D random 6x."""
    return {f"site-{i + 1}": {"mask_type": m.mask_type, "acceleration": m.acceleration,
                              "center_fraction": m.center_fraction, "seed": m.seed}
            for i, m in enumerate(FEDMRI_SITE_MASKS)}


@dataclass
class FedMRIConfig(LearnerConfig):
    """FedMRI (Feng et al., TMI 2022) and the baselines sharing its data, U-Net, optimiser and loop.

    Paper defaults: RMSprop lr 1e-4, StepLR x0.1 every 40 rounds, 10 local epochs, batch 8, beta 100, 32 channels,
    4 pools. The job scales the model and the epochs down for CPUs through its options.

    Args:
        algorithm: ``fedmri`` (shared encoder, site decoder, L_con), ``fedavg``, ``fedprox``, ``fedbn`` (the U-Net
            gets BatchNorm so there is something to keep local), ``lg-fedavg`` (encoder local, decoder shared: LG-FedAvg
            keeps the representation local and shares the head) or ``local`` (SingleSet: nothing from the server is
            loaded).
        channels, num_pools: U-Net width and depth.
        beta: weight of L_con (paper 100); the reconstruction loss weight lambda is 1.
        negatives: ``exact`` (the N snapshots; needs the server's and every site's opt-in) or ``linear`` (the
            server's sign-count summary; our cheaper variant).
        linear_floor: the linear denominator never drops below this fraction of its round-start value.
        relay_snapshot: this site agrees that the server relays its pre-average encoder to the other sites
            (exact negatives; opt-in, logged).
        lr_step_rounds, lr_gamma: StepLR stepped once per round.
        masks: per site ``{mask_type, acceleration, center_fraction, seed}``; default the paper's four sites.
        crop: optional in-plane centre crop at load time (cheap runs); None keeps the converted size.
        max_slices_per_volume: optional cap of slices per volume and split at load time (cheap runs).
    """

    algorithms: ClassVar[tuple[str, ...]] = ALGORITHMS

    data_root: str = "data/fedmri/converted"
    datalist_dir: str = "datalists/fedmri"
    algorithm: str = "fedmri"
    batch_size: int = 8
    lr: float = 1e-4
    local_epochs: int = 10
    channels: int = 32
    num_pools: int = 4
    beta: float = 100.0
    negatives: str = "linear"
    linear_floor: float = 0.1
    relay_snapshot: bool = False
    lr_step_rounds: int = 40
    lr_gamma: float = 0.1
    masks: dict[str, dict[str, Any]] = field(default_factory=default_site_masks)
    crop: int | None = None
    max_slices_per_volume: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.negatives not in NEGATIVE_CHOICES:
            raise ValueError(f"negatives must be one of {NEGATIVE_CHOICES}, got {self.negatives!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if not 0 < self.linear_floor <= 1:
            raise ValueError(f"linear_floor must be in (0, 1], got {self.linear_floor!r}")
        if self.lr_step_rounds < 1 or not 0 < self.lr_gamma <= 1:
            raise ValueError(f"lr_step_rounds must be >= 1 and lr_gamma in (0, 1], got "
                             f"{self.lr_step_rounds!r}, {self.lr_gamma!r}")
        if self.channels < 1 or self.num_pools < 1:
            raise ValueError(f"channels and num_pools must be >= 1, got {self.channels!r}, {self.num_pools!r}")
        if self.crop is not None and self.crop < 2 ** self.num_pools:
            raise ValueError(f"crop must be >= 2**num_pools = {2 ** self.num_pools}, got {self.crop!r}")
        if self.max_slices_per_volume is not None and self.max_slices_per_volume < 1:
            raise ValueError(f"max_slices_per_volume must be >= 1, got {self.max_slices_per_volume!r}")
        for site in self.masks:
            self.mask_spec(site)  # checks every entry now, naming the field

    def mask_spec(self, site: str) -> dict[str, Any]:
        """The site's fixed mask specification (checked)."""
        if site not in self.masks:
            raise ValueError(f"masks: no sampling mask configured for site {site!r} (configured: {sorted(self.masks)})")
        spec = self.masks[site]
        fields = {"mask_type", "acceleration", "center_fraction", "seed"}
        if not isinstance(spec, dict) or set(spec) != fields:
            raise ValueError(f"masks[{site!r}] must have exactly the fields {sorted(fields)}, got {spec!r}")
        if spec["mask_type"] not in MASK_TYPES:
            raise ValueError(f"masks[{site!r}].mask_type must be one of {MASK_TYPES}, got {spec['mask_type']!r}")
        if not (isinstance(spec["acceleration"], int | float) and spec["acceleration"] > 1):
            raise ValueError(f"masks[{site!r}].acceleration must be a number > 1, got {spec['acceleration']!r}")
        return spec
