"""Configuration of cooperative training + latent-space data augmentation as a federated local learner.

Chen et al., "Cooperative Training and Latent Space Data Augmentation for Robust Medical Image Segmentation",
MICCAI 2021 (https://arxiv.org/abs/2107.01079). Defaults are the reference code's ACDC settings except where a CPU
needs less (noted per field); ``src.learners.cooptrain`` says what each option does to the federated round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from src.config.base import LearnerConfig

__all__ = ["ALGORITHMS", "HARD_EXAMPLE_BN", "CoopTrainConfig"]

#: fedavg: all five parts averaged; fedbn: BatchNorm stays on the site; share-anatomy: the image decoder stays
ALGORITHMS = ("fedavg", "fedbn", "share-anatomy")
#: ``hard_example_bn`` values: parts whose BN is frozen on the hard-example passes (here, not in
#: ``src.learners.cooperative_step``, so that the job's ``--help`` imports no torch)
HARD_EXAMPLE_BN = ("reference", "all", "none")


@dataclass
class CoopTrainConfig(LearnerConfig):
    """Cooperative training at every site (see ``src.learners.cooptrain``).

    Args:
        algorithm: ``fedavg`` (all five parts averaged), ``fedbn`` (BN weights and statistics of every part stay
            on the site) or ``share-anatomy`` (the image decoder, i.e. the site's appearance, stays on the site;
            encoder, code filter, segmentation decoder and STN are averaged).
        latent_da: cooperative training with hard examples (True) or the standard step of the same networks.
        cooperative: False trains only the segmentation path (encoder, code filter, segmentation decoder) with
            cross-entropy and predicts without the STN: plain "standard training" (needs ``latent_da=False``).
        hard_example_bn: BN on the hard-example passes (``"reference"``: frozen in all parts but the image decoder).
        lr: Adam learning rate (1e-4, the reference's; no schedule).
        batch_size: volumes per batch; each gives ``slices_per_volume`` random slices, and the step trains on
            those slices augmented plus the same slices un-augmented (the reference: 10 + 10).
        slices_per_volume: random short-axis slices drawn from each training volume per epoch.
        crop_size: centre crop fed to the networks (192 in the reference; a multiple of 16).
        pad_size: slices are zero-padded to this size before augmentation and cropping (224 in the reference).
        augment: random affine augmentation of the training slices (rotation, scale, translation).
        base_channels, code_channels: network widths (16 and 128 in the reference).
        reset_optimizer_each_round: clear Adam's moments when a round starts (False: they persist, as in the
            centralised reference, which never resets them).
        eval_batch_size: slices per forward pass at evaluation.
    """

    algorithms: ClassVar[tuple[str, ...]] = ALGORITHMS

    data_root: str = "data"
    datalist_dir: str = "datalists/cooptrain"
    algorithm: str = "fedavg"
    latent_da: bool = True
    cooperative: bool = True
    hard_example_bn: str = "reference"
    lr: float = 1e-4
    batch_size: int = 5
    slices_per_volume: int = 2
    local_epochs: int = 1
    crop_size: int = 192
    pad_size: int = 224
    augment: bool = True
    base_channels: int = 16
    code_channels: int = 128
    reset_optimizer_each_round: bool = False
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_da and not self.cooperative:
            raise ValueError("latent_da=True needs cooperative=True (hard examples come from the dual network)")
        if self.hard_example_bn not in HARD_EXAMPLE_BN:
            raise ValueError(f"hard_example_bn must be one of {HARD_EXAMPLE_BN}, got {self.hard_example_bn!r}")
        if self.crop_size < 16 or self.crop_size % 16:
            raise ValueError(f"crop_size must be a positive multiple of 16, got {self.crop_size!r}")
        if self.pad_size < self.crop_size:
            raise ValueError(f"pad_size must be >= crop_size {self.crop_size}, got {self.pad_size!r}")
        for name in ("slices_per_volume", "base_channels", "code_channels", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
