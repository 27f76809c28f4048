"""The one site-local learner every algorithm extends.

It owns a site's data, model, optimiser and MONAI/ignite engines, and exposes three operations that map onto
NVFlare's tasks: :meth:`train_round` (``train``), :meth:`evaluate` (``validate``) and :meth:`best_local_state`
(``submit_model``). Subclasses fill the hooks (model, transforms, loss, metrics, inferer) and may override
:meth:`shared_keys` to keep personal parameters on the site. Nothing here imports NVFlare, so the same learner
runs in a plain loop, the simulator and a provisioned deployment.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Compose
from monai.utils import set_determinism

from src.config.base import LearnerConfig
from src.data.datalist import load_site_datalist
from src.learners.protocol import PHASE_KEY, TRAIN_SAMPLES_KEY

__all__ = ["FederatedLearner", "RoundResult", "pick_device", "TRAIN_SAMPLES_KEY", "PHASE_KEY"]



def pick_device() -> torch.device:
    """The GPU when present (``CUDA_VISIBLE_DEVICES`` decides which), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def site_seed(seed: int, site: str) -> int:
    """A per-site seed: the same seed gives each site different but reproducible randomness."""
    return (seed * 1_000_003 + int(hashlib.sha256(site.encode()).hexdigest()[:8], 16)) % (2**31)


@dataclass
class RoundResult:
    """What one local training round produced."""

    params: dict[str, torch.Tensor]
    num_steps: int
    metrics: dict[str, float]
    #: extra FLModel meta sent with the params (e.g. :data:`TRAIN_SAMPLES_KEY`)
    meta: dict = field(default_factory=dict)


class FederatedLearner(ABC):
    """Site-local training and evaluation engine.

    Args:
        site: the site's name (``site-1`` ...); selects its datalist and seeds its randomness.
        config: the algorithm's configuration.
        output_dir: where best/last local models are written as plain ``state_dict`` files.
        device: defaults to :func:`pick_device`.
    """

    #: name of the metric that selects the best model (one name across learners, dashboards and reports)
    key_metric: str = "val_metric"

    def __init__(
        self,
        site: str,
        config: LearnerConfig,
        output_dir: str | Path = ".",
        device: torch.device | None = None,
    ):
        self.site, self.config = site, config
        self.device = device or pick_device()
        self.output_dir = Path(output_dir)
        torch.set_num_threads(config.threads())
        set_determinism(site_seed(config.seed, site))
        self.datalist = load_site_datalist(config.site_datalist(site), config.site_data_root())
        self.check_data(self.datalist)
        self.model = self.build_model().to(self.device)
        self.optimizer = self.build_optimizer()
        self.loss_function = self.build_loss()
        self.train_loader = self._loader("training", shuffle=True)
        self.trainer = self._build_trainer()
        self._evaluators: dict[str, SupervisedEvaluator] = {}
        self.best_metric = -np.inf
        self.round = 0

    # ---- hooks -----------------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError(f"Subclass {self.__class__.__name__} must implement this method.")

    @abstractmethod
    def transforms(self, stage: str) -> Compose:
        """Transforms for ``stage`` in ``{"training", "validation", "testing"}``."""
        raise NotImplementedError(f"Subclass {self.__class__.__name__} must implement this method.")

    @abstractmethod
    def build_loss(self) -> torch.nn.Module:
        raise NotImplementedError(f"Subclass {self.__class__.__name__} must implement this method.")

    @abstractmethod
    def build_metrics(self, prefix: str) -> dict:
        """Ignite metrics for evaluation; the key ``f"{prefix}_<name>"`` names each one everywhere."""
        raise NotImplementedError(f"Subclass {self.__class__.__name__} must implement this method.")

    def check_data(self, datalist: Mapping[str, list[dict]]) -> None:
        """Fail fast on unusable data before any training (file named); default: nothing beyond the datalist."""
        return None

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr)

    def inferer(self, stage: str) -> Inferer:
        return SimpleInferer()

    def postprocessing(self):
        return None

    def shared_keys(self) -> list[str]:
        """state_dict keys that leave the site; personalised learners return a strict subset."""
        return list(self.model.state_dict())

    def run_phase(self, phase: str, params: Mapping, meta: Mapping) -> tuple[dict, dict[str, float]]:
        """Answer a controller's non-training request (meta[:data:`PHASE_KEY`]); returns (params, metrics)."""
        raise ValueError(f"{self.site}: {type(self).__name__} does not handle task phase {phase!r}")

    # ---- engines ---------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        ds = CacheDataset(
            self.datalist[split], self.transforms(split), cache_rate=self.config.cache_rate, progress=False
        )
        return DataLoader(
            ds,
            batch_size=self.config.batch_size if split == "training" else 1,
            shuffle=shuffle,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _build_trainer(self) -> SupervisedTrainer:
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=0,
            train_data_loader=self.train_loader,
            network=self.model,
            optimizer=self.optimizer,
            loss_function=self.loss_function,
            inferer=self.inferer("training"),
            decollate=False,
            amp=self.device.type == "cuda",
        )
        trainer.add_event_handler(Events.EPOCH_STARTED, self._reset_loss)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate_loss)
        return trainer

    def _reset_loss(self, engine) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def _accumulate_loss(self, engine) -> None:
        self._loss_sum += engine.state.output["loss"].item()
        self._loss_count += 1

    def _evaluator(self, split: str) -> SupervisedEvaluator:
        if split not in self._evaluators:
            prefix = "val" if split == "validation" else "test"
            metrics = self.build_metrics(prefix)
            key = next(iter(metrics))
            self._evaluators[split] = SupervisedEvaluator(
                device=self.device,
                val_data_loader=self._loader(split),
                network=self.model,
                inferer=self.inferer(split),
                postprocessing=self.postprocessing(),
                key_val_metric={key: metrics[key]},
                additional_metrics={k: v for k, v in metrics.items() if k != key} or None,
                amp=self.device.type == "cuda",
            )
        return self._evaluators[split]

    # ---- operations ------------------------------------------------------------------------------------
    def load_params(self, params: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Load received (shared) parameters; keys missing from ``params`` keep their local values."""
        own = self.model.state_dict()
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise KeyError(f"received parameters not in the model: {unknown[:5]}")
        for k, v in params.items():
            own[k] = torch.as_tensor(v, dtype=own[k].dtype).reshape(own[k].shape)
        self.model.load_state_dict(own)

    def shared_state(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        return {k: state[k].detach().cpu().clone() for k in self.shared_keys()}

    def train_round(self, params: Mapping | None = None, round_number: int | None = None) -> RoundResult:
        """Load ``params`` (if given), train ``local_epochs`` epochs and return the shared state."""
        if params is not None:
            self.load_params(params)
        self.round = self.round + 1 if round_number is None else round_number
        start = time.perf_counter()
        self.trainer.state.max_epochs = self.trainer.state.epoch + self.config.local_epochs
        self.trainer.run()
        steps = self.config.local_epochs * len(self.train_loader)
        metrics = {
            "train_loss": self._loss_sum / max(self._loss_count, 1),
            "train_seconds": time.perf_counter() - start,
        }
        self.save("last")
        meta = {TRAIN_SAMPLES_KEY: len(self.train_loader.dataset)}
        return RoundResult(self.shared_state(), steps, metrics, meta)

    def evaluate(self, params: Mapping | None = None, split: str = "validation") -> dict[str, float]:
        """Score ``params`` (default: the current model) on ``split``; the model is restored afterwards."""
        if not self.datalist.get(split):
            return {}
        backup = None
        if params is not None:
            backup = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.load_params(params)
        try:
            return self.score(split)
        finally:
            if backup is not None:
                self.model.load_state_dict(backup)

    def score(self, split: str) -> dict[str, float]:
        """Metrics of the current model on ``split``: the MONAI evaluator with :meth:`build_metrics` by default."""
        evaluator = self._evaluator(split)
        evaluator.run()
        return {k: float(v) for k, v in evaluator.state.metrics.items()}

    def update_best(self, metrics: Mapping[str, float]) -> bool:
        """Keep the best local model by ``key_metric`` on the validation split (never the test split)."""
        value = metrics.get(self.key_metric)
        if value is None or value <= self.best_metric:
            return False
        self.best_metric = value
        self.save("best")
        return True

    def checkpoint_path(self, which: str) -> Path:
        return self.output_dir / f"{self.site}_{which}_model.pt"

    def save(self, which: str) -> Path:
        path = self.checkpoint_path(which)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, path)
        return path

    def best_local_state(self) -> dict[str, torch.Tensor]:
        """The best local model (or the current one before any validation) for cross-site evaluation."""
        path = self.checkpoint_path("best")
        state = torch.load(path, weights_only=True) if path.exists() else self.model.state_dict()
        return {k: state[k].cpu() for k in self.shared_keys()}
