"""2-D image classification learner (NVFlare's MedNIST tutorial): DenseNet121, accuracy and AUC."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from ignite.metrics import Accuracy, EpochMetric
from monai.metrics import compute_roc_auc
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandFlipd,
    RandRotated,
    RandZoomd,
    ScaleIntensityd,
)

from src.config.tutorial import MedNISTConfig
from src.data.validation import DataValidationError
from src.learners.base import FederatedLearner
from src.models.networks import MedNISTDenseNet

NUM_CLASSES = 6


class ClassificationLearner(FederatedLearner):
    """Six-class MedNIST classification; ``val_accuracy`` selects models, ``val_auc`` is reported beside it."""

    key_metric = "val_accuracy"
    config: MedNISTConfig

    def check_data(self, datalist: Mapping[str, list[dict]]) -> None:
        for split, items in datalist.items():
            for i, item in enumerate(items):
                if not isinstance(item.get("label"), int) or not 0 <= item["label"] < NUM_CLASSES:
                    raise DataValidationError(
                        f"{split}[{i}].label: expected a class index in 0..{NUM_CLASSES - 1}, got {item.get('label')!r}"
                    )

    def build_model(self) -> torch.nn.Module:
        return MedNISTDenseNet(out_channels=NUM_CLASSES)

    def build_loss(self) -> torch.nn.Module:
        return torch.nn.CrossEntropyLoss()

    def transforms(self, stage: str) -> Compose:
        base = [
            LoadImaged(keys="image", image_only=True, reader="PILReader"),
            EnsureChannelFirstd(keys="image"),
            ScaleIntensityd(keys="image"),
        ]
        if stage == "training":
            base += [
                RandRotated(keys="image", range_x=0.26, prob=0.5, keep_size=True),
                RandFlipd(keys="image", spatial_axis=0, prob=0.5),
                RandZoomd(keys="image", min_zoom=0.9, max_zoom=1.1, prob=0.5),
            ]
        return Compose(base + [EnsureTyped(keys=("image", "label"), track_meta=False)])

    def build_metrics(self, prefix: str) -> dict:
        return {f"{prefix}_accuracy": Accuracy(output_transform=_logits_and_index), f"{prefix}_auc": EpochMetric(
            macro_auc_where_defined, output_transform=_probabilities_and_onehot, check_compute_fn=False
        )}


def macro_auc_where_defined(probabilities: torch.Tensor, onehot: torch.Tensor) -> float:
    """Macro one-vs-rest ROC AUC over the classes it is defined for (present and absent in the labels).

    MONAI's macro AUC is NaN as soon as one class is missing from a small validation split (a few images per site);
    this averages the defined classes instead and is NaN only when no class has both outcomes.
    """
    values = [compute_roc_auc(probabilities[:, c], onehot[:, c]) for c in range(onehot.shape[1])
              if 0 < int(onehot[:, c].sum()) < onehot.shape[0]]
    return float(sum(values) / len(values)) if values else float("nan")


def _stack(output, key):
    return torch.stack([torch.as_tensor(o[key]) for o in output]) if isinstance(output, list) else output[key]


def _logits_and_index(output):
    return _stack(output, "pred"), _stack(output, "label").long().view(-1)


def _probabilities_and_onehot(output):
    pred, label = _logits_and_index(output)
    return torch.softmax(pred.float(), dim=1), torch.nn.functional.one_hot(label, NUM_CLASSES)
