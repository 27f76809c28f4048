"""Typed, serialisable configuration shared by every learner; algorithm configs extend it.

A job script builds one config, writes it as JSON into the job's ``custom/`` folder and every site reads it
back. Site-specific paths are not baked in: a site's datalist is ``<datalist_dir>/<site>.json`` and a real
hospital overrides both locations through the environment variables ``FL_DATA_ROOT`` / ``FL_DATALIST``
without editing the job.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="LearnerConfig")

DATA_ROOT_ENV = "FL_DATA_ROOT"
DATALIST_ENV = "FL_DATALIST"


@dataclass
class LearnerConfig:
    """Settings every site-local learner understands.

    Args:
        data_root: folder the datalist paths are relative to.
        datalist_dir: folder holding ``<site>.json`` datalists.
        local_epochs: local epochs per federated round.
        batch_size: training batch size.
        lr: learning rate of the local optimiser.
        seed: base seed; each site derives its own from it and its name.
        num_threads: torch CPU threads per site; 0 shares the machine's cores among ``n_clients``.
        n_clients: sites running on this machine (the simulator runs one process per site).
        cache_rate: fraction of the deterministic preprocessing cached in memory.
        num_workers: data-loader workers (0 keeps each site to one process).
        eval_split: split scored by cross-site evaluation (``testing`` keeps it apart from model selection).
        tracking: dashboards that receive the site's metrics (``tensorboard``, ``mlflow``).
        algorithm: the federated method; every learner understands ``fedavg``, ``fedprox`` (proximal term
            ``fedprox_mu`` on the local loss) and ``fedbn`` (BatchNorm keys stay on the site); algorithm configs
            add their own to :attr:`algorithms`.
        fedprox_mu: FedProx proximal coefficient (used when ``algorithm == "fedprox"``).
        resume: restore the site's last saved state (model, optimiser, counters, personal state) at start-up.
        extra: free-form algorithm options that have no typed field yet.
    """

    #: values ``algorithm`` may take for this config
    algorithms: ClassVar[tuple[str, ...]] = ("fedavg", "fedprox", "fedbn")

    data_root: str = "data"
    datalist_dir: str = "datalists"
    local_epochs: int = 1
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    num_threads: int = 0
    n_clients: int = 1
    cache_rate: float = 1.0
    num_workers: int = 0
    eval_split: str = "testing"
    tracking: tuple[str, ...] = ("tensorboard", "mlflow")
    algorithm: str = "fedavg"
    fedprox_mu: float = 0.01
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("local_epochs", "batch_size", "n_clients"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.fedprox_mu) and self.fedprox_mu >= 0):
            raise ValueError(f"fedprox_mu must be a finite number >= 0, got {self.fedprox_mu!r}")
        if self.algorithm not in self.algorithms:
            raise ValueError(f"algorithm must be one of {self.algorithms}, got {self.algorithm!r}")
        if self.eval_split not in ("validation", "testing"):
            raise ValueError(f"eval_split must be 'validation' or 'testing', got {self.eval_split!r}")

    def site_data_root(self) -> Path:
        return Path(os.environ.get(DATA_ROOT_ENV) or self.data_root)

    def site_datalist(self, site: str) -> Path:
        return Path(os.environ.get(DATALIST_ENV) or Path(self.datalist_dir) / f"{site}.json")

    def threads(self) -> int:
        return self.num_threads or max(1, (os.cpu_count() or 1) // self.n_clients)

    def to_dict(self) -> dict[str, Any]:
        return {"__class__": type(self).__name__, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        values = {k: v for k, v in values.items() if k != "__class__"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config fields {unknown}")
        return cls(**values)

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {str(path)!r}: {e}") from e
