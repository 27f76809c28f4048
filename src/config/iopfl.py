"""Configuration of the IOP-FL job and its baselines on the multi-site prostate slices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from src.config.base import LearnerConfig

ALGORITHMS = ("fedavg", "fedprox", "fedbn", "iopfl")


@dataclass
class IOPFLConfig(LearnerConfig):
    """IOP-FL (Jiang et al., TMI 2023) and the federated baselines sharing its data, model and loop.

    Defaults are the reference code's effective settings (batch 5, Adam with amsgrad, lr 1e-3, a fresh
    optimiser each round, 1 local epoch, alpha 0.1) except the U-Net widths, which are scaled down for CPUs
    (the reference: ``features=(32, 64, 128, 256, 512)``).

    Args:
        algorithm: ``fedavg``, ``fedprox`` (proximal term, ``fedprox_mu``), ``fedbn`` (BatchNorm stays on the
            site) or ``iopfl`` (FedAvg + the private personalised model).
        features: U-Net encoder widths and bottleneck width.
        alpha: weight of the previous personalised model in the IOP-FL update.
        fedprox_mu: FedProx proximal coefficient.
        export_personalised: this site agrees to send its personalised model to the server for routing on an
            unseen site (opt-in; the personalised model reveals more about the site than the global one).
        tta_passes, tta_batch_size: test-time routing on a held-out site (reference: 10 passes, batch 5).
    """

    algorithms: ClassVar[tuple[str, ...]] = ALGORITHMS

    data_root: str = "data/multisite_prostate"
    datalist_dir: str = "datalists/multisite_prostate"
    batch_size: int = 5
    lr: float = 1e-3
    local_epochs: int = 1
    algorithm: str = "iopfl"
    features: tuple[int, ...] = (8, 16, 32, 64, 128)
    alpha: float = 0.1
    fedprox_mu: float = 0.01
    export_personalised: bool = False
    tta_passes: int = 10
    tta_batch_size: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha!r}")
        self.features = tuple(self.features)
