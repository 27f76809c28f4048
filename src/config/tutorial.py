"""Configurations of NVFlare's medical-imaging tutorial jobs (defaults sized for a 2-core CPU laptop)."""

from __future__ import annotations

from dataclasses import dataclass

from src.config.base import LearnerConfig


@dataclass
class ProstateConfig(LearnerConfig):
    """Prostate 3-D whole-gland segmentation (MSD Task05 T2), as in NVFlare's prostate tutorial.

    ``roi_size`` is the training crop and sliding-window size; ``spacing`` the resampling target in mm.
    """

    data_root: str = "data/prostate"
    datalist_dir: str = "datalists/msd_prostate"
    batch_size: int = 2
    lr: float = 3e-3  # Adam; 1e-3 needs about twice the epochs on the synthetic set, 1e-2 is less stable
    local_epochs: int = 5
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)
    roi_size: tuple[int, int, int] = (64, 64, 16)
    samples_per_volume: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)


@dataclass
class MedNISTConfig(LearnerConfig):
    """MedNIST six-class classification with DenseNet121, as in NVFlare's MedNIST tutorial."""

    data_root: str = "data/mednist"
    datalist_dir: str = "datalists/mednist"
    batch_size: int = 32
    lr: float = 1e-4
    local_epochs: int = 1
    eval_split: str = "testing"
