"""The one site-local learner every algorithm extends: one explicit federated round, built of hooks.

:meth:`FederatedLearner.fit_round` runs a round in a fixed order:

1. score the received global model on the validation split (:meth:`evaluate`: restores the model afterwards and
   changes no other state, so scoring never personalises anything);
2. :meth:`begin_round`: load the received shared (and adaptive) keys, keep the personal keys, take what the
   server sent besides the model (``extras``), set the FedProx anchor;
3. MONAI's ``SupervisedTrainer`` runs ``local_epochs`` epochs; each iteration is :meth:`train_step`
   (its ``iteration_update``; MONAI's supervised step by default);
4. :meth:`end_round`: the keys to send, the round's meta and metrics; :meth:`save` writes the model and the
   site's persistent state (:meth:`extra_state`) so a restarted site resumes where it was;
5. score the local model and keep the best one by ``key_metric`` (validation split, never the test split).

A subclass fills the model/data/loss/metrics hooks and overrides only what differs: :meth:`train_step` for its
own local step, :meth:`personal_keys_of` / :meth:`adaptive_keys_of` for what stays on the site,
:meth:`begin_round` / :meth:`end_round` for per-round personalisation, :meth:`extra_state` /
:meth:`load_extra_state` for state beyond the model. FedProx (``algorithm="fedprox"``: :meth:`penalty`) and FedBN
(``algorithm="fedbn"``: BatchNorm keys personal) are options of this base, so every learner has them. Nothing here
imports NVFlare at module level: the same learner runs in a plain loop, the simulator and a deployment.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Compose, Randomizable
from monai.utils import set_determinism

from src.config.base import LearnerConfig
from src.data.datalist import load_site_datalist
from src.models.key_groups import KeyGroups, norm_keys
from src.protocol import PHASE_KEY, TRAIN_SAMPLES_KEY

__all__ = ["FederatedLearner", "RoundResult", "pick_device", "TRAIN_SAMPLES_KEY", "PHASE_KEY"]

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    """The GPU when present (``CUDA_VISIBLE_DEVICES`` decides which), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def site_seed(seed: int, site: str) -> int:
    """A per-site seed: the same seed gives each site different but reproducible randomness."""
    return (seed * 1_000_003 + int(hashlib.sha256(site.encode()).hexdigest()[:8], 16)) % (2**31)


@dataclass
class RoundResult:
    """What one local round produced."""

    params: dict[str, torch.Tensor]
    num_steps: int
    metrics: dict[str, float]
    #: extra FLModel meta sent with the params (e.g. :data:`TRAIN_SAMPLES_KEY`)
    meta: dict = field(default_factory=dict)
    #: the received global model's validation score: what the server's model selection compares
    received_metrics: dict[str, float] = field(default_factory=dict)


class FederatedLearner(ABC):
    """Site-local training and evaluation engine (see the module docstring for the round).

    Args:
        site: the site's name (``site-1`` ...); selects its datalist and seeds its randomness.
        config: the algorithm's configuration.
        output_dir: where the site's models (plain ``state_dict`` files) and persistent state are written.
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
        self.key_groups = self.key_groups_of(self.model, config)
        self.optimizer = self.build_optimizer()
        self.loss_function = self.build_loss()
        self.train_loader = self._loader("training", shuffle=True)
        self.trainer = self._build_trainer()
        self._evaluators: dict[str, SupervisedEvaluator] = {}
        self._proximal: tuple[Any, torch.nn.Module] | None = None  # (PTFedProxLoss, frozen anchor)
        self.extras: dict[str, Any] = {}
        self.best_metric = -np.inf
        self.round = 0
        if config.resume and not self.restore():
            log.warning(f"{site}: resume requested but no saved state in {self.output_dir}; starting fresh")

    # ---- model, data and loss hooks --------------------------------------------------------------------
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

    # ---- which keys stay on the site ---------------------------------------------------------------------
    @classmethod
    def personal_keys_of(cls, model: torch.nn.Module, config: LearnerConfig) -> list[str]:
        """Keys that never leave the site and are never overwritten: the BatchNorm keys under FedBN, else none.

        A class method, so a job can build the same outgoing filter from the model without any site data.
        """
        return norm_keys(model) if config.algorithm == "fedbn" else []

    @classmethod
    def adaptive_keys_of(cls, model: torch.nn.Module, config: LearnerConfig) -> list[str]:
        """Keys sent and averaged but loaded back through a personalisation rule in :meth:`begin_round`."""
        return []

    @classmethod
    def key_groups_of(cls, model: torch.nn.Module, config: LearnerConfig) -> KeyGroups:
        groups = KeyGroups.split(model, cls.personal_keys_of(model, config), cls.adaptive_keys_of(model, config))
        if config.algorithm == "fedbn" and not groups.personal:
            raise ValueError(f"fedbn on {type(model).__name__}, which has no BatchNorm: it would silently be FedAvg")
        return groups

    def personal_keys(self) -> list[str]:
        return [k for k in self.model.state_dict() if k in self.key_groups.personal]

    def shared_keys(self) -> list[str]:
        """state_dict keys that leave the site (shared and adaptive), in state_dict order."""
        return [k for k in self.model.state_dict() if k not in self.key_groups.personal]

    # ---- round hooks -------------------------------------------------------------------------------------
    def begin_round(self, params: Mapping, extras: Mapping) -> None:
        """Start a round from what the server sent: shared and adaptive keys loaded, personal keys kept."""
        self.extras = dict(extras)
        if params:
            self.load_params(params)
        if self.config.algorithm == "fedprox":
            self.set_proximal_anchor()

    def train_step(self, engine: SupervisedTrainer, batch: Mapping) -> dict:
        """One local iteration; returns at least ``{"loss": tensor}``. Default: MONAI's supervised step, whose
        loss is :meth:`loss_function` plus :meth:`penalty`. A custom step must add :meth:`penalty` itself."""
        return engine._iteration(engine, batch)

    def penalty(self) -> torch.Tensor | float:
        """Regulariser added to the local loss: FedProx's proximal term to the received model, else 0."""
        if self._proximal is None:
            return 0.0
        proximal, anchor = self._proximal
        return proximal(self.model, anchor)

    def set_proximal_anchor(self) -> None:
        """Freeze a copy of the current (just received) model as FedProx's anchor (NVFlare ``PTFedProxLoss``)."""
        if self._proximal is None:
            from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

            self._proximal = (PTFedProxLoss(mu=self.config.fedprox_mu), copy.deepcopy(self.model).requires_grad_(False))
        self._proximal[1].load_state_dict(self.model.state_dict())

    def end_round(self, metrics: dict[str, float]) -> RoundResult:
        """Close a round: the keys to send, meta and metrics; the site's state saved (model + :meth:`extra_state`)."""
        self.save("last")
        steps = self.config.local_epochs * len(self.train_loader)
        meta = {TRAIN_SAMPLES_KEY: len(self.train_loader.dataset)}
        return RoundResult(self.shared_state(), steps, metrics, meta)

    def run_phase(self, phase: str, params: Mapping, meta: Mapping) -> tuple[dict, dict[str, float]]:
        """Answer a controller's non-training request (meta[:data:`PHASE_KEY`]); returns (params, metrics)."""
        raise ValueError(f"{self.site}: {type(self).__name__} does not handle task phase {phase!r}")

    # ---- persistent state --------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """State beyond the model weights that a restarted site needs; subclasses extend ``super().extra_state()``.

        Only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
        """
        py_state = random.getstate()
        state = {
            "round": self.round,
            "best_metric": float(self.best_metric),
            "optimizer": self.optimizer.state_dict(),
            "trainer": {"epoch": self.trainer.state.epoch, "iteration": self.trainer.state.iteration},
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _saveable_numpy_state(np.random.get_state()),
                "python": [py_state[0], torch.tensor(py_state[1], dtype=torch.int64), py_state[2]],
                # MONAI's random transforms draw from their own generators
                "transforms": [_saveable_numpy_state(t.R.get_state()) for t in self._random_transforms()],
            },
        }
        if getattr(self.trainer, "scaler", None) is not None:
            state["grad_scaler"] = self.trainer.scaler.state_dict()
        return state

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""
        self.round, self.best_metric = int(state["round"]), float(state["best_metric"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.trainer.state.epoch = int(state["trainer"]["epoch"])
        self.trainer.state.iteration = int(state["trainer"]["iteration"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_numpy_state(rng["numpy"]))
        transforms = self._random_transforms()
        if len(transforms) != len(rng["transforms"]):
            raise ValueError(f"{self.site}: saved state has {len(rng['transforms'])} random transform states, the "
                             f"training pipeline has {len(transforms)} random transforms")
        for t, saved in zip(transforms, rng["transforms"]):
            t.R.set_state(_numpy_state(saved))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
        if "grad_scaler" in state and getattr(self.trainer, "scaler", None) is not None:
            self.trainer.scaler.load_state_dict(state["grad_scaler"])

    def checkpoint_path(self, which: str) -> Path:
        return self.output_dir / f"{self.site}_{which}_model.pt"

    def state_path(self) -> Path:
        return self.output_dir / f"{self.site}_state.pt"

    def save(self, which: str) -> Path:
        """Write the model as a plain ``state_dict``; ``"last"`` also writes :meth:`extra_state` (one call, both)."""
        path = self.checkpoint_path(which)
        _atomic_save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, path)
        if which == "last":
            self.save_state()
        return path

    def save_state(self) -> Path:
        """Write :meth:`extra_state` (``<site>_state.pt``)."""
        _atomic_save(self.extra_state(), self.state_path())
        return self.state_path()

    def restore(self) -> bool:
        """Load the last saved model and state (True), or leave everything as is when none was saved (False)."""
        model_path, state_path = self.checkpoint_path("last"), self.state_path()
        if not (model_path.is_file() and state_path.is_file()):
            return False
        self.model.load_state_dict(torch.load(model_path, map_location=self.device, weights_only=True))
        self.load_extra_state(torch.load(state_path, map_location="cpu", weights_only=True))
        log.info(f"{self.site}: resumed from {state_path} (round {self.round})")
        return True

    def _random_transforms(self) -> list[Randomizable]:
        """The training pipeline's random transforms, in order (not via ``Compose.flatten``: building a Compose
        re-seeds every transform in it)."""
        found, stack = [], [self.train_loader.dataset.transform]
        while stack:
            t = stack.pop(0)
            if isinstance(t, Compose):
                stack[:0] = list(t.transforms)
            elif isinstance(t, Randomizable):
                found.append(t)
                # dict transforms draw from an inner array transform with its own generator (RandZoomd.rand_zoom,
                # RandRotated.rand_rotate, ...): without it a restored site would not resume the same draws
                found.extend(v for _, v in sorted(vars(t).items()) if isinstance(v, Randomizable) and v is not t)
        return found

    # ---- engines ---------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        """A split's loader; evaluation loaders draw from a private generator, so scoring a model never moves the
        global RNG that training shuffles with (a validation more or less would otherwise change training).

        Each item carries its source file (:data:`SOURCE_KEY`, a plain string the dict transforms leave alone), so
        a non-finite training loss names the files of its batch even when the transforms drop the image metadata.
        """
        items = [{SOURCE_KEY: _source_of(item), **item} if isinstance(item, Mapping) else item
                 for item in self.datalist[split]]
        ds = CacheDataset(items, self.transforms(split), cache_rate=self.config.cache_rate, progress=False)
        return DataLoader(
            ds,
            batch_size=self.config.batch_size if split == "training" else 1,
            shuffle=shuffle,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=None if shuffle else torch.Generator(),
        )

    def _build_trainer(self) -> SupervisedTrainer:
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=0,
            train_data_loader=self.train_loader,
            network=self.model,
            optimizer=self.optimizer,
            loss_function=self._local_loss,
            inferer=self.inferer("training"),
            decollate=False,
            amp=self.device.type == "cuda",
            iteration_update=self.train_step,
        )
        trainer.add_event_handler(Events.EPOCH_STARTED, self._reset_loss)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate_loss)
        return trainer

    def _local_loss(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        loss = self.loss_function(pred, label)
        return loss if self._proximal is None else loss + self.penalty()

    def _reset_loss(self, engine) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def _accumulate_loss(self, engine) -> None:
        loss = engine.state.output["loss"].item()
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"{self.site}: round {self.round}: training loss is {loss} at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration} (batch files: {_batch_files(engine.state.batch) or 'unknown'})")
        self._loss_sum += loss
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
        """Load received parameters: personal keys keep their local values, missing keys too."""
        own = self.model.state_dict()
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise KeyError(f"received parameters not in the model: {unknown[:5]}")
        for k, v in params.items():
            if k not in self.key_groups.personal:
                own[k] = torch.as_tensor(v, dtype=own[k].dtype).reshape(own[k].shape)
        self.model.load_state_dict(own)

    def shared_state(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        return {k: state[k].detach().cpu().clone() for k in self.shared_keys()}

    def train_round(self, params: Mapping | None = None, round_number: int | None = None,
                    extras: Mapping | None = None) -> RoundResult:
        """Steps 2-4 of a round: :meth:`begin_round`, ``local_epochs`` epochs of :meth:`train_step`,
        :meth:`end_round`. Without ``params`` the site trains on from its current model (local-only training)."""
        self.round = self.round + 1 if round_number is None else round_number
        self.begin_round(params or {}, extras or {})
        start = time.perf_counter()
        before = (_cloned(self.model.state_dict()), _cloned(self.optimizer.state_dict()))
        before_epoch = (self.trainer.state.epoch, self.trainer.state.iteration)
        self.trainer.state.max_epochs = self.trainer.state.epoch + self.config.local_epochs
        try:
            self.trainer.run()
        except NonFiniteLossError:
            # the step already applied NaN gradients: back to the round's start, a fresh trainer, nothing sent
            self.model.load_state_dict(before[0])
            self.optimizer.load_state_dict(before[1])
            self.trainer = self._build_trainer()
            self.trainer.state.epoch, self.trainer.state.iteration = before_epoch
            raise
        return self.end_round({
            "train_loss": self._loss_sum / max(self._loss_count, 1),
            "train_seconds": time.perf_counter() - start,
        })

    def fit_round(self, params: Mapping | None = None, round_number: int | None = None,
                  extras: Mapping | None = None) -> RoundResult:
        """One federated round in its fixed order (module docstring); ``received_metrics`` score ``params``.

        ``metrics`` holds the received model's scores (``val_*``), the local model's (``val_*_local``) and the
        training figures; the best local model by ``key_metric`` is kept for cross-site evaluation.
        """
        received = self.evaluate(params, "validation") if params else {}
        result = self.train_round(params, round_number, extras)
        local = self.evaluate(split="validation")
        self.update_best(local)
        result.received_metrics = received
        result.metrics = {**received, **{f"{k}_local": v for k, v in local.items()}, **result.metrics}
        return result

    def evaluate(self, params: Mapping | None = None, split: str = "validation") -> dict[str, float]:
        """Score ``params`` (default: the current model) on ``split``; the model is restored afterwards and no
        other state changes (no personalisation, no counters)."""
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
        self.save_state()  # the state written at the end of the round predates this score
        return True

    def best_local_state(self) -> dict[str, torch.Tensor]:
        """The best local model (or the current one before any validation) for cross-site evaluation."""
        path = self.checkpoint_path("best")
        state = torch.load(path, weights_only=True) if path.exists() else self.model.state_dict()
        return {k: state[k].cpu() for k in self.shared_keys()}


class NonFiniteLossError(RuntimeError):
    """A site's own training produced a NaN/Inf loss; the round is abandoned (the model is back at its start)."""


#: batch key holding each item's source file (see ``_loader``)
SOURCE_KEY = "source_file"


def _source_of(item: Mapping) -> str:
    value = item.get("image", next(iter(item.values()), ""))
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _batch_files(batch) -> list[str]:
    """The source files of a MONAI batch (:data:`SOURCE_KEY`, else ``MetaTensor.meta['filename_or_obj']``)."""
    files = []
    if isinstance(batch, Mapping) and batch.get(SOURCE_KEY) is not None:
        names = batch[SOURCE_KEY]
        return [str(n) for n in ([names] if isinstance(names, str) else names)]
    values = batch.values() if isinstance(batch, Mapping) else (batch if isinstance(batch, (list, tuple)) else [])
    for value in values:
        names = getattr(value, "meta", {}).get("filename_or_obj") if hasattr(value, "meta") else None
        if isinstance(names, str):
            names = [names]
        for name in names or []:
            if str(name) not in files:
                files.append(str(name))
    return files


def _cloned(obj: Any) -> Any:
    """A copy of a state dict tree (tensors cloned, containers copied, plain values shared): what ``deepcopy``
    gives for a model's or optimiser's ``state_dict``, without its memo bookkeeping and per-tensor pickling path
    (the round's NaN-rollback snapshot; measured in benchmarks/fedavg_overhead.py P2)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _cloned(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cloned(v) for v in obj)
    return obj


def _saveable_numpy_state(state: tuple) -> list:
    """A numpy RandomState state as tensors and plain values (``torch.load(weights_only=True)`` can read it)."""
    return [state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:]]


def _numpy_state(saved: list) -> tuple:
    name, keys, *rest = saved
    return (name, keys.numpy().astype(np.uint32), *rest)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file, so a crash mid-write never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
