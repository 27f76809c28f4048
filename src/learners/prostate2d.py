"""2.5-D multi-site prostate segmentation learner: FedAvg, FedProx and FedBN are the base's options.

Data: the slices written by ``data_prep.multisite_prostate`` (image (3,H,W) float32, label (1,H,W) {0,1}); no
training augmentation (the reference has it commented out). Loss: the reference's batch-level soft Dice over
both classes (MONAI ``DiceLoss`` with ``batch=True``, background included, smooth 1e-5). Optimiser: Adam with
amsgrad, state cleared at every round (the reference builds a new optimiser each round). FedProx's proximal term
(NVFlare ``PTFedProxLoss``) and FedBN's local BatchNorm come from the base (``config.algorithm``).

Evaluation regroups slice predictions into 3-D volumes by the datalist's ``case``/``slice`` fields and reports
``{prefix}_dice`` (3-D foreground Dice), ``{prefix}_hd95`` and ``{prefix}_dice2d`` (the reference's 2-D score);
ignite metrics cannot regroup, so :meth:`score` replaces the base's evaluator.
"""

from __future__ import annotations

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
from src.models.unet2d import UNet2D

KEYS = ("image", "label")
__all__ = ["Prostate2DLearner", "reference_dice_loss"]


def reference_dice_loss() -> nn.Module:
    """Soft Dice over the whole batch, mean of background and prostate, smooth 1e-5 (reference ``utils/loss.py``)."""
    return DiceLoss(to_onehot_y=True, softmax=True, include_background=True, batch=True, smooth_nr=1e-5,
                    smooth_dr=1e-5)


class Prostate2DLearner(FederatedLearner):
    """Site learner for the 2.5-D slices; ``config.algorithm`` picks fedavg, fedprox or fedbn (base options)."""

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
        return reference_dice_loss()

    def transforms(self, stage: str) -> Compose:
        return Compose([LoadImaged(keys=KEYS, image_only=True), EnsureTyped(keys=KEYS, dtype=torch.float32,
                                                                            track_meta=False)])

    def build_metrics(self, prefix: str) -> dict:
        raise NotImplementedError("scored by evaluate(): 3-D metrics need slices regrouped by case")

    def begin_round(self, params: Mapping, extras: Mapping) -> None:
        super().begin_round(params, extras)
        self.optimizer.state.clear()  # a fresh Adam state every round, as the reference

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
