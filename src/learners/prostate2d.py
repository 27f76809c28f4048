"""2.5-D multi-site prostate segmentation learner: FedAvg, FedProx and FedBN share it (one option each).

Data: the slices written by ``data_prep.multisite_prostate`` (image (3,H,W) float32, label (1,H,W) {0,1}); no
training augmentation (the reference has it commented out). Loss: the reference's batch-level soft Dice over
both classes (MONAI ``DiceLoss`` with ``batch=True``, background included, smooth 1e-5). Optimiser: Adam with
amsgrad, state cleared at every round (the reference builds a new optimiser each round).

Evaluation regroups slice predictions into 3-D volumes by the datalist's ``case``/``slice`` fields and reports
``{prefix}_dice`` (3-D foreground Dice), ``{prefix}_hd95`` and ``{prefix}_dice2d`` (the reference's 2-D score);
ignite metrics cannot regroup, so :meth:`evaluate` replaces the base's evaluator.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from monai.losses import DiceLoss
from monai.transforms import Compose, EnsureTyped, LoadImaged
from torch import nn

from src.config.iopfl import IOPFLConfig
from src.data.slices import check_slice_pair
from src.data.validation import DataValidationError
from src.learners.base import FederatedLearner
from src.metrics.slice_volume import score_slices
from src.models.unet2d import UNet2D, norm_keys

KEYS = ("image", "label")
__all__ = ["Prostate2DLearner", "ProximalLoss", "reference_dice_loss"]


def reference_dice_loss() -> nn.Module:
    """Soft Dice over the whole batch, mean of background and prostate, smooth 1e-5 (reference ``utils/loss.py``)."""
    return DiceLoss(to_onehot_y=True, softmax=True, include_background=True, batch=True, smooth_nr=1e-5,
                    smooth_dr=1e-5)


class ProximalLoss(nn.Module):
    """``task_loss(pred, label) + PTFedProxLoss(model, reference)``: FedProx's proximal term on the local loss.

    Args:
        task_loss: the segmentation loss.
        model: the model being trained.
        mu: proximal coefficient (NVFlare's ``PTFedProxLoss``).
    """

    def __init__(self, task_loss: nn.Module, model: nn.Module, mu: float):
        super().__init__()
        from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

        self.task_loss, self.proximal = task_loss, PTFedProxLoss(mu=mu)
        self._model = [model]  # a list keeps the model out of this module's parameters
        self._reference = [copy.deepcopy(model).requires_grad_(False)]

    def set_reference(self, model: nn.Module) -> None:
        """Freeze a copy of ``model`` (the received global model) as the proximal anchor."""
        self._reference[0].load_state_dict(model.state_dict())

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.task_loss(pred, label) + self.proximal(self._model[0], self._reference[0])


class Prostate2DLearner(FederatedLearner):
    """Site learner for the 2.5-D prostate slices; ``config.algorithm`` picks fedavg, fedprox or fedbn."""

    key_metric = "val_dice"
    config: IOPFLConfig

    def check_data(self, datalist: Mapping[str, list[dict]]) -> None:
        """Every item names its case and slice (needed to rebuild volumes) and a readable image/label pair."""
        for split, items in datalist.items():
            for i, item in enumerate(items):
                for key in ("case", "slice"):
                    if key not in item:
                        raise DataValidationError(f"{self.site}: {split}[{i}] has no {key!r} field")
            if items:  # spot-check the first pair of each split; the converter validated them all
                check_slice_pair(items[0]["image"], items[0]["label"])

    def build_model(self) -> nn.Module:
        return UNet2D(features=self.config.features)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, amsgrad=True)

    def build_loss(self) -> nn.Module:
        if self.config.algorithm == "fedprox":
            return ProximalLoss(reference_dice_loss(), self.model, self.config.fedprox_mu)
        return reference_dice_loss()

    def transforms(self, stage: str) -> Compose:
        return Compose([LoadImaged(keys=KEYS, image_only=True), EnsureTyped(keys=KEYS, dtype=torch.float32,
                                                                            track_meta=False)])

    def build_metrics(self, prefix: str) -> dict:
        raise NotImplementedError("scored by evaluate(): 3-D metrics need slices regrouped by case")

    def personal_keys(self) -> list[str]:
        """Keys that never leave the site: the BatchNorm layers under FedBN, nothing otherwise."""
        return norm_keys(self.model) if self.config.algorithm == "fedbn" else []

    def shared_keys(self) -> list[str]:
        personal = set(self.personal_keys())
        return [k for k in self.model.state_dict() if k not in personal]

    def load_params(self, params: Mapping) -> None:
        """Load received parameters, ignoring the server's copies of this site's personal keys (FedBN)."""
        personal = set(self.personal_keys())
        super().load_params({k: v for k, v in params.items() if k not in personal})

    def train_round(self, params: Mapping | None = None, round_number: int | None = None):
        if params is not None:
            self.load_params(params)
        if isinstance(self.loss_function, ProximalLoss):
            self.loss_function.set_reference(self.model)
        self.optimizer.state.clear()  # a fresh Adam state every round, as the reference
        return super().train_round(None, round_number)

    @torch.no_grad()
    def predict_split(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
        """(pred, label, cases, slices) of every slice of ``split`` with the current model in eval mode."""
        loaders = self.__dict__.setdefault("_eval_loaders", {})
        if split not in loaders:
            loaders[split] = self._loader(split)
        self.model.eval()
        preds, labels, cases, slices = [], [], [], []
        for batch in loaders[split]:
            preds.append(self.model(batch["image"].to(self.device)).argmax(1).cpu().numpy())
            labels.append(batch["label"][:, 0].numpy().astype(np.uint8))
            cases += list(batch["case"])
            slices += [int(s) for s in batch["slice"]]
        return np.concatenate(preds), np.concatenate(labels), cases, slices

    def score(self, split: str) -> dict[str, float]:
        """3-D Dice/HD95 per volume and the reference's 2-D Dice, from the slices regrouped by case."""
        prefix = "val" if split == "validation" else "test"
        return score_slices(*self.predict_split(split), prefix=prefix)
