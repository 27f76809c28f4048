"""Cooperative training + latent-space data augmentation as the base learner's local step (Chen et al., MICCAI 2021).

Each site runs :func:`src.learners.cooperative_step.cooperative_step` as the base's :meth:`train_step`: hard examples
come from the site's own model and data within the step, so nothing beyond the model leaves the site.
``latent_da=False`` is the standard step of the same networks (the paper's and the reference's baseline).

Decided for the federated setting (the reference is centralised):

- **What is averaged** (``algorithm``): ``fedavg`` averages all five parts (encoder, code filter, image decoder,
  segmentation decoder, STN), BN statistics included; ``fedbn`` keeps every BatchNorm layer's weight, bias and
  running statistics on the site (base option); ``share-anatomy`` keeps the image decoder (the site's appearance)
  on the site and averages the anatomy parts (encoder, code filter, segmentation decoder, STN).
- **Adam moments persist across rounds** (``reset_optimizer_each_round=False``): the centralised reference never
  resets them, so a site's optimiser carries on over the received weights; they are site state (saved with the model
  and restored on restart), never sent.
- **Each site's randomness persists across rounds**: one ``torch.Generator`` (input noise and all masking draws),
  seeded per site, plus the augmentation transforms' random states and the global RNGs (base); all saved in
  :meth:`extra_state`, so a restarted site continues the same random sequence.
- **Hard-example BN** is frozen as the reference does (``hard_example_bn="reference"``): encoder, code filter,
  segmentation decoder and STN neither track statistics nor train BN affine parameters on hard examples; only the
  image decoder's pass on them does. So the averaged running statistics of those parts describe real images.
- **Inference** uses the STN refinement, as the reference: prediction = argmax STN(softmax(FTN(x) / 2))
  (``cooperative=False``, plain training of the segmentation path, predicts argmax FTN(x)).

Data: converted ACDC / M&Ms frames (``data_prep.acdc``, ``data_prep.mnms``; datalists combined by
``data_prep.cooptrain``). Training: random short-axis slices of each volume (``slices_per_volume``), zero-padded to
``pad_size``, augmented (random affine) and centre-cropped to ``crop_size``, rescaled to [0, 1] per slice; the batch
is those slices plus the same slices un-augmented, as the reference. Deviation: the reference's augmentation also
has elastic deformation and intensity changes; here it is a random affine only (MONAI ``RandAffined``).
Evaluation (:meth:`score`): every frame of the split as a 3-D stack, Dice per structure (LV, MYO, RV) and HD95
(mm) per volume, optionally corrupted (:func:`src.transforms.corruptions.acdc_c`) before the per-slice rescaling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CopyItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandAffined,
    Randomizable,
    RandSpatialCropSamplesd,
    ScaleIntensityd,
    SpatialPadd,
    SqueezeDimd,
)
from torch import nn

from src.config.cooptrain import CoopTrainConfig
from src.data.cardiac import check_cardiac_datalist
from src.learners.base import FederatedLearner, site_seed
from src.learners.cooperative_step import CooperativeConfig, cooperative_step
from src.metrics.cardiac import mean_scores, volume_scores
from src.models.cooperative_net import CooperativeNet

__all__ = ["CoopTrainLearner", "preprocess_volume", "predict_volume"]

KEYS = ("image", "label")
CLEAN_KEYS = ("image_clean", "label_clean")


def _rescale_slices(volume: torch.Tensor) -> torch.Tensor:
    """(1, H, W, Z) -> each slice min-max rescaled to [0, 1] (a constant slice -> 0)."""
    low = volume.amin(dim=(0, 1, 2), keepdim=True)
    high = volume.amax(dim=(0, 1, 2), keepdim=True)
    return (volume - low) / (high - low).clamp_min(1e-8)


def preprocess_volume(image: np.ndarray, label: np.ndarray, pad_size: int, crop_size: int):
    """A (H, W, Z) frame and its label -> (1, crop, crop, Z) float image in [0, 1] per slice, (crop, crop, Z) label,
    padded to ``pad_size`` and centre-cropped exactly as the training slices are."""
    from monai.transforms import CenterSpatialCrop, SpatialPad

    pad, crop = SpatialPad((pad_size, pad_size, -1)), CenterSpatialCrop((crop_size, crop_size, -1))
    img = crop(pad(torch.as_tensor(np.asarray(image, np.float32))[None])).as_subclass(torch.Tensor)
    lab = crop(pad(torch.as_tensor(np.asarray(label, np.int64))[None])).as_subclass(torch.Tensor)
    return _rescale_slices(img), lab[0]


@torch.no_grad()
def predict_volume(model: CooperativeNet, volume: torch.Tensor, batch_size: int = 16, refine: bool = True):
    """(1, H, W, Z) image -> (H, W, Z) int label map; ``refine``: STN applied to the FTN prediction (the paper)."""
    model.eval()
    device = next(model.parameters()).device
    slices = volume.permute(3, 0, 1, 2)  # (Z, 1, H, W)
    preds = []
    for start in range(0, slices.shape[0], batch_size):
        x = slices[start:start + batch_size].to(device)
        logits = model(x)
        preds.append((model.refine(logits) if refine else logits).argmax(1).cpu())
    return torch.cat(preds).permute(1, 2, 0).numpy()


class CoopTrainLearner(FederatedLearner):
    """Site learner whose local step is cooperative training (module docstring); ``val_dice`` selects models."""

    key_metric = "val_dice"
    config: CoopTrainConfig

    def __init__(self, site: str, config: CoopTrainConfig, output_dir=".", device=None):
        # before the base init: restore() may fill them
        self.generator = torch.Generator().manual_seed(site_seed(config.seed, site) ^ 0x5EED)
        self._volumes: dict[str, tuple] = {}
        self.step_config = CooperativeConfig(latent_da=config.latent_da, cooperative=config.cooperative,
                                             hard_example_bn=config.hard_example_bn, learning_rate=config.lr)
        super().__init__(site, config, output_dir, device)

    # ---- model, data, loss ---------------------------------------------------------------------------------
    def check_data(self, datalist: Mapping[str, list[dict]]) -> None:
        check_cardiac_datalist(datalist, self.site)

    def build_model(self) -> CooperativeNet:
        return CooperativeNet(base_channels=self.config.base_channels, code_channels=self.config.code_channels)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr)

    def build_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()  # the base's contract; the cooperative step computes its own losses

    def build_metrics(self, prefix: str) -> dict:
        raise NotImplementedError("scored by score(): Dice/HD95 per 3-D volume")

    def transforms(self, stage: str) -> Compose:
        cfg = self.config
        load = [LoadImaged(keys=KEYS, image_only=True), EnsureChannelFirstd(keys=KEYS, channel_dim="no_channel"),
                EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False)]
        if stage != "training":
            return Compose(load)
        augment = [RandAffined(keys=KEYS, prob=0.5, rotate_range=np.pi / 12, scale_range=0.1,
                               translate_range=0.05 * cfg.pad_size, mode=("bilinear", "nearest"),
                               padding_mode="zeros")] if cfg.augment else []
        return Compose(load + [
            RandSpatialCropSamplesd(keys=KEYS, roi_size=(-1, -1, 1), num_samples=cfg.slices_per_volume,
                                    random_size=False),
            SqueezeDimd(keys=KEYS, dim=-1),
            SpatialPadd(keys=KEYS, spatial_size=(cfg.pad_size, cfg.pad_size)),
            CopyItemsd(keys=KEYS, names=CLEAN_KEYS),
            *augment,
            CenterSpatialCropd(keys=(*KEYS, *CLEAN_KEYS), roi_size=(cfg.crop_size, cfg.crop_size)),
            ScaleIntensityd(keys=("image", "image_clean"), minv=0.0, maxv=1.0),
            EnsureTyped(keys=(*KEYS, *CLEAN_KEYS), dtype=torch.float32, track_meta=False),
        ])

    # ---- which keys stay on the site ------------------------------------------------------------------------
    @classmethod
    def personal_keys_of(cls, model: nn.Module, config: CoopTrainConfig) -> list[str]:
        """fedbn: every BN key (base); share-anatomy: every image-decoder key; fedavg: none."""
        if config.algorithm == "share-anatomy":
            return sorted(model.key_groups(("image_decoder",)).personal)
        return super().personal_keys_of(model, config)

    # ---- the round ----------------------------------------------------------------------------------------
    def begin_round(self, params: Mapping, extras: Mapping) -> None:
        super().begin_round(params, extras)
        if self.config.reset_optimizer_each_round:
            self.optimizer.state.clear()

    def train_step(self, engine, batch: Mapping) -> dict:
        """The cooperative step on augmented slices + the same slices un-augmented (one Adam step)."""
        image = torch.cat([batch["image"], batch["image_clean"]]).to(self.device)
        label = torch.cat([batch["label"], batch["label_clean"]])[:, 0].round().long().to(self.device)
        report = cooperative_step(self.model, self.optimizer, image, label, self.step_config, self.generator)
        return {"loss": torch.tensor(report["loss"]),
                **{k: v for k, v in report.items() if k != "loss" and isinstance(v, float)}}

    # ---- persistent state ---------------------------------------------------------------------------------
    def _random_transforms(self) -> list[Randomizable]:
        found, seen = [], set()
        for t in self.train_loader.dataset.transform.flatten().transforms:
            for obj in (t, *vars(t).values()):
                if isinstance(obj, Randomizable) and id(obj) not in seen:
                    seen.add(id(obj))
                    found.append(obj)
        return found

    def extra_state(self) -> dict[str, Any]:
        transforms = []
        for t in self._random_transforms():
            name, keys, pos, has_gauss, cached = t.R.get_state()
            transforms.append([name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached])
        return {**super().extra_state(), "generator": self.generator.get_state(), "transform_rng": transforms}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        super().load_extra_state(state)
        self.generator.set_state(state["generator"])
        saved = state["transform_rng"]
        mine = self._random_transforms()
        if len(saved) != len(mine):
            raise ValueError(f"{self.site}: saved state has {len(saved)} random transforms, this learner {len(mine)}")
        for t, (name, keys, pos, has_gauss, cached) in zip(mine, saved):
            t.R.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))

    # ---- evaluation ---------------------------------------------------------------------------------------
    def _volume(self, item: Mapping) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...]]:
        path = str(item["image"])
        if path not in self._volumes:
            import nibabel as nib

            img = nib.load(path)
            label = np.asarray(nib.load(str(item["label"])).dataobj)
            volume, lab = preprocess_volume(np.asarray(img.dataobj), label, self.config.pad_size,
                                            self.config.crop_size)
            self._volumes[path] = (volume, lab, tuple(float(z) for z in img.header.get_zooms()[:3]))
        return self._volumes[path]

    def score_items(self, items: list[Mapping], corruption: Callable | None = None,
                    state: Mapping | None = None) -> list[dict]:
        """Per-volume scores of ``items`` (datalist entries) with the current model (or ``state``, restored after).

        Args:
            corruption: ``f(volume (1, H, W, Z)) -> volume`` applied before the per-slice rescaling.
        """
        backup = None
        if state is not None:
            backup = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.load_params(state)
        try:
            rows = []
            for item in items:
                volume, label, spacing = self._volume(item)
                if corruption is not None:
                    volume = _rescale_slices(torch.as_tensor(corruption(volume.clone())))
                pred = predict_volume(self.model, volume, self.config.eval_batch_size, refine=self.config.cooperative)
                rows.append({"subject": str(item.get("subject", "")), "phase": str(item.get("phase", "")),
                             **volume_scores(pred, label.numpy(), spacing)})
            return rows
        finally:
            if backup is not None:
                self.model.load_state_dict(backup)

    def score(self, split: str) -> dict[str, float]:
        prefix = "val" if split == "validation" else "test"
        rows = self.score_items(self.datalist.get(split, []))
        return mean_scores(({k: v for k, v in r.items() if k not in ("subject", "phase")} for r in rows), prefix)

