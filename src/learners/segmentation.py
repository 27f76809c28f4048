"""3-D whole-gland segmentation learner (NVFlare's prostate tutorial, done right)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from monai.handlers import MeanDice
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.losses import DiceLoss
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Spacingd,
    SpatialPadd,
)

from src.config.tutorial import ProstateConfig
from src.data.validation import DataValidationError, check_label_values, load_nifti
from src.learners.base import FederatedLearner
from src.models.networks import ProstateUNet

KEYS = ("image", "label")


class SegmentationLearner(FederatedLearner):
    """Binary 3-D segmentation with a MONAI UNet, Dice loss, sliding-window inference and ``val_dice``."""

    key_metric = "val_dice"
    config: ProstateConfig

    def check_data(self, datalist: Mapping[str, list[dict]]) -> None:
        """Every image/label pair: readable, same shape and affine, label values in {0, 1}."""
        for split, items in datalist.items():
            for item in items:
                image, affine, _ = load_nifti(item["image"], f"{split}.image")
                label, label_affine, _ = load_nifti(item["label"], f"{split}.label")
                if image.shape[:3] != label.shape[:3]:
                    raise DataValidationError(
                        f"{split}.label: {item['label']!r} shape {label.shape} does not match image "
                        f"{item['image']!r} shape {image.shape}"
                    )
                if not np.allclose(affine, label_affine, atol=1e-3):
                    raise DataValidationError(f"{split}.label: {item['label']!r} affine differs from its image")
                check_label_values(label, (0, 1), item["label"])

    def build_model(self) -> torch.nn.Module:
        return ProstateUNet(channels=self.config.channels)

    def build_loss(self) -> torch.nn.Module:
        return DiceLoss(to_onehot_y=True, softmax=True)

    def _preprocess(self) -> list:
        cfg = self.config
        return [
            LoadImaged(keys=KEYS, image_only=True),
            EnsureChannelFirstd(keys=KEYS),
            Orientationd(keys=KEYS, axcodes="RAS"),
            Spacingd(keys=KEYS, pixdim=cfg.spacing, mode=("bilinear", "nearest")),
            NormalizeIntensityd(keys="image", nonzero=True),
            SpatialPadd(keys=KEYS, spatial_size=cfg.roi_size),
            EnsureTyped(keys=KEYS, track_meta=False),
        ]

    def transforms(self, stage: str) -> Compose:
        if stage != "training":
            return Compose(self._preprocess())
        cfg = self.config
        return Compose(
            self._preprocess()
            + [
                RandCropByPosNegLabeld(
                    keys=KEYS, label_key="label", spatial_size=cfg.roi_size, num_samples=cfg.samples_per_volume
                ),
                RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
                RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            ]
        )

    def inferer(self, stage: str) -> Inferer:
        if stage == "training":
            return SimpleInferer()
        return SlidingWindowInferer(roi_size=self.config.roi_size, sw_batch_size=4, overlap=0.25)

    def postprocessing(self):
        return Compose([AsDiscreted(keys="pred", argmax=True, to_onehot=2), AsDiscreted(keys="label", to_onehot=2)])

    def build_metrics(self, prefix: str) -> dict:
        return {f"{prefix}_dice": MeanDice(include_background=False, output_transform=_pred_label)}


def _pred_label(output):
    from monai.handlers import from_engine

    return from_engine(["pred", "label"])(output)
