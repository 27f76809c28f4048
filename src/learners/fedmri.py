"""FedMRI site learner (Feng et al., TMI 2022) on the learner base, and its baselines on the same data and loop.

What differs from the base, hook by hook:

* :meth:`personal_keys_of`: ``fedmri``: the decoder (up path + final conv) never leaves the site; ``lg-fedavg``:
  the encoder stays local, the decoder is shared; ``fedbn``: the BatchNorm keys (the U-Net is built with
  BatchNorm for this baseline only); ``fedavg``/``fedprox``/``local``: none (``local`` sends its model so the round
  completes but never loads what it receives: SingleSet).
* :meth:`build_optimizer`: RMSprop (paper lr 1e-4) and a StepLR (x ``lr_gamma`` every ``lr_step_rounds``),
  stepped once per round in :meth:`end_round`; the optimiser state is never reset. Both are in
  :meth:`extra_state`, so a restarted site resumes them.
* :meth:`begin_round`: after the base loads the shared keys, a **cloned** snapshot of the received encoder is the
  positive; the negatives come from the server's extras (:func:`src.protocol.unpack_negatives`): the N snapshots
  (exact) or the sign-count summary (linear). None in round 1: L_con off.
* :meth:`train_step`: MSE + beta * L_con (+ FedProx's penalty); L_con is skipped on the first minibatch of each
  local epoch, as in the reference training loop.
* data: one fixed sampling mask per site for the whole run (from ``config.masks``; generated once per k-space
  shape from its seed); slices load through :class:`~src.transforms.kspace_slices.LoadReconstructionSlice`;
  :meth:`check_data` validates every file (``kspace`` present, complex, 3-D, finite) before training.
* :meth:`score`: per-volume NMSE / PSNR / SSIM on de-normalised magnitudes (slices regrouped by ``volume``);
  ``{prefix}_measured_kspace`` says which fraction came from measured k-space (1) rather than k-space simulated
  from magnitude images (0). The model is the site's personalised one (global encoder + own decoder) when
  scoring what the server sent; the best round by validation PSNR of that model is kept
  (``<site>_personalised_best_model.pt``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from monai.transforms import Compose
from torch import nn

from src.config.fedmri import FedMRIConfig
from src.data.validation import DataValidationError
from src.learners.base import FederatedLearner, _atomic_save
from src.losses.weighted_contrastive import NegativeSummary, weighted_contrastive_loss
from src.metrics.reconstruction import METRIC_NAMES, volume_metrics
from src.models.fastmri_unet import FastMRIUNet, encoder_decoder_keys
from src.models.key_groups import norm_keys
from src.protocol import FEDMRI_RELAY_META, unpack_negatives
from src.transforms.kspace import denormalize
from src.transforms.kspace_masks import make_mask
from src.transforms.kspace_slices import LoadReconstructionSlice, check_kspace_file

__all__ = ["FedMRILearner"]

log = logging.getLogger(__name__)


class FedMRILearner(FederatedLearner):
    """Single-coil reconstruction learner; ``config.algorithm`` picks FedMRI or a baseline (module docstring)."""

    key_metric = "val_psnr"
    config: FedMRIConfig

    def __init__(self, *args, **kwargs):
        # before the base init: build_optimizer / restore fill them
        self.scheduler: torch.optim.lr_scheduler.StepLR | None = None
        self.positive: dict[str, torch.Tensor] | None = None
        self.negatives = None
        self.negative_mode = ""
        self.best_personalised = float("-inf")
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self._round_start_state: dict[str, torch.Tensor] | None = None
        self._lcon_sum, self._lcon_count = 0.0, 0
        super().__init__(*args, **kwargs)
        self.encoder_keys, self.decoder_keys = encoder_decoder_keys(self.model)

    # ---- model, data, loss -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_fedmri_model(self.config)

    @classmethod
    def personal_keys_of(cls, model: nn.Module, config: FedMRIConfig) -> list[str]:
        encoder, decoder = encoder_decoder_keys(model)
        if config.algorithm == "fedmri":
            return decoder
        if config.algorithm == "lg-fedavg":
            return encoder
        if config.algorithm == "fedbn":
            return norm_keys(model)
        return []

    def mask_for(self, shape: tuple[int, int]) -> torch.Tensor:
        """The site's fixed mask for k-space of ``shape`` (generated once, from the configured seed)."""
        if shape not in self._masks:
            spec = self.config.mask_spec(self.site)
            self._masks[shape] = make_mask(spec["mask_type"], shape, float(spec["acceleration"]),
                                           float(spec["center_fraction"]), int(spec["seed"]))
        return self._masks[shape]

    def transforms(self, stage: str) -> Compose:
        return Compose([LoadReconstructionSlice(self.mask_for, self.config.crop)])

    def check_data(self, datalist: Mapping[str, list[dict]]) -> None:
        """Every file readable k-space (complex, 3-D, finite), slice in range, fields present; the mask
        specification valid; optional per-volume slice cap applied (cheap runs)."""
        self.config.mask_spec(self.site)
        by_file: dict[str, list[int]] = {}
        for split, items in datalist.items():
            for i, item in enumerate(items):
                for key in ("image", "slice"):
                    if key not in item:
                        raise DataValidationError(f"{self.site}: {split}[{i}] has no {key!r} field")
                by_file.setdefault(str(item["image"]), []).append(int(item["slice"]))
        for path, slices in by_file.items():
            check_kspace_file(path, slices)
        cap = self.config.max_slices_per_volume
        if cap:
            for items in datalist.values():
                kept, per_volume = [], {}
                for item in items:
                    vol = item.get("volume", item["image"])
                    per_volume[vol] = per_volume.get(vol, 0) + 1
                    if per_volume[vol] <= cap:
                        kept.append(item)
                items[:] = kept
        sources = sorted({str(it.get("source_type", "unknown")) for items in datalist.values() for it in items})
        log.info(f"{self.site}: k-space sources {sources}")
        self.kspace_sources = sources

    def build_loss(self) -> nn.Module:
        return nn.MSELoss()

    def build_metrics(self, prefix: str) -> dict:
        raise NotImplementedError("scored by score(): metrics are per volume on de-normalised magnitudes")

    def build_optimizer(self) -> torch.optim.Optimizer:
        optimizer = torch.optim.RMSprop(self.model.parameters(), lr=self.config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.config.lr_step_rounds,
                                                         gamma=self.config.lr_gamma)
        return optimizer

    # ---- round --------------------------------------------------------------------------------------------
    def begin_round(self, params: Mapping, extras: Mapping) -> None:
        if self.config.algorithm == "local":
            params = {}  # SingleSet: never load what the server sends
        super().begin_round(params, extras)
        self._round_start_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.positive = {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in self.encoder_keys}
        self.negatives, self.negative_mode = None, ""
        self._lcon_sum, self._lcon_count = 0.0, 0
        received = unpack_negatives(self.extras) if self.config.algorithm == "fedmri" else None
        if received is None or self.config.beta == 0:
            return
        mode, payload = received
        if mode == "exact":
            self.negatives = [{k: torch.as_tensor(s[k]).to(self.device, torch.float32) for k in self.encoder_keys}
                              for s in payload]
            self.negative_mode = "all"
        else:
            self.negatives = NegativeSummary(
                distance=torch.as_tensor(payload["distance"]).double().reshape(()),
                sign_sum={k: torch.as_tensor(payload["sign_sum"][k]).to(self.device) for k in self.encoder_keys},
                num_negatives=payload["num_negatives"])
            self.negative_mode = "linear"

    def contrastive_loss(self) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        local = {k: params[k] for k in self.encoder_keys}
        return weighted_contrastive_loss(local, self.positive, self.negatives, keys=self.encoder_keys,
                                         negative_mode=self.negative_mode, linear_floor=self.config.linear_floor)

    def train_step(self, engine, batch: Mapping) -> dict:
        """MSE + beta * L_con (skipped on the first minibatch of each local epoch) + FedProx's penalty."""
        self.model.train()
        x, y = batch["image"].to(self.device), batch["label"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        pred = self.model(x)
        loss = self.loss_function(pred, y)
        batch_index = (engine.state.iteration - 1) % max(engine.state.epoch_length or 1, 1)
        if self.negatives is not None and batch_index > 0:
            lcon = self.contrastive_loss()
            loss = loss + self.config.beta * lcon.to(loss.dtype)
            self._lcon_sum += float(lcon.detach())
            self._lcon_count += 1
        loss = loss + self.penalty()
        loss.backward()
        self.optimizer.step()
        return {"image": x, "label": y, "pred": pred.detach(), "loss": loss.detach()}

    def end_round(self, metrics: dict[str, float]):
        self.scheduler.step()  # once per round
        metrics = {**metrics, "train_lr": float(self.optimizer.param_groups[0]["lr"]),
                   "train_lcon": self._lcon_sum / self._lcon_count if self._lcon_count else 0.0}
        result = super().end_round(metrics)
        result.meta[FEDMRI_RELAY_META] = bool(self.config.relay_snapshot)
        if self.config.relay_snapshot:
            log.warning(f"{self.site}: opted in to the server relaying this site's encoder snapshot to other sites")
        return result

    def fit_round(self, params=None, round_number=None, extras=None):
        """The base's round; also keeps the best personalised model (global encoder + own decoder) by the
        validation PSNR of what the server sent."""
        result = super().fit_round(params, round_number, extras)
        value = result.received_metrics.get(self.key_metric)
        if value is not None and value > self.best_personalised and self._round_start_state is not None:
            self.best_personalised = value
            _atomic_save({k: v.cpu() for k, v in self._round_start_state.items()},
                         self.checkpoint_path("personalised_best"))
        return result

    # ---- persistent state ---------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {**super().extra_state(), "scheduler": self.scheduler.state_dict(),
                "best_personalised": float(self.best_personalised)}

    def load_extra_state(self, state) -> None:
        super().load_extra_state(state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_personalised = float(state.get("best_personalised", float("-inf")))

    # ---- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_split(self, split: str) -> dict[str, dict[str, list]]:
        """Per volume: de-normalised (zero-filled, prediction, target) magnitudes in slice order."""
        loaders = self.__dict__.setdefault("_eval_loaders", {})
        if split not in loaders:
            loaders[split] = self._loader(split)
        was_training = self.model.training
        self.model.eval()
        volumes: dict[str, dict[str, list]] = {}
        try:
            for batch in loaders[split]:
                x = batch["image"].to(self.device)
                pred = self.model(x).cpu().double()
                mean, std = batch["mean"].double()[:, :, None, None], batch["std"].double()[:, :, None, None]
                for i, vol in enumerate(batch["volume"]):
                    v = volumes.setdefault(vol, {"slice": [], "input": [], "pred": [], "target": [], "measured": []})
                    v["slice"].append(int(batch["slice"][i]))
                    v["input"].append(denormalize(batch["image"][i].double(), mean[i], std[i])[0])
                    v["pred"].append(denormalize(pred[i], mean[i], std[i])[0])
                    v["target"].append(denormalize(batch["label"][i].double(), mean[i], std[i])[0])
                    v["measured"].append(float(batch["measured"][i]))
        finally:
            self.model.train(was_training)
        return volumes

    def volume_scores(self, split: str) -> dict[str, dict[str, float]]:
        """Per volume of ``split``: ``{"nmse", "psnr", "ssim", "measured_kspace", "slices"}`` of the current model
        (the paired units of the comparison; :meth:`score` is their mean)."""
        out = {}
        for name, v in self.predict_split(split).items():
            order = np.argsort(v["slice"])
            gt = torch.stack([v["target"][i] for i in order]).clamp_min(0)
            pred = torch.stack([v["pred"][i] for i in order])
            m = volume_metrics(gt, pred)
            out[name] = {**{k[4:]: float(m[k]) for k in METRIC_NAMES},
                         "measured_kspace": float(np.mean(v["measured"])), "slices": len(order)}
        return out

    def score(self, split: str) -> dict[str, float]:
        prefix = "val" if split == "validation" else "test"
        per_volume = self.volume_scores(split)
        out = {f"{prefix}_{name[4:]}": float(np.mean([m[name[4:]] for m in per_volume.values()]))
               for name in METRIC_NAMES}
        # fraction of slices with measured k-space (every slice counts once, as the volumes differ in length)
        n = {k: m.pop("slices") for k, m in per_volume.items()}
        measured = sum(per_volume[k]["measured_kspace"] * n[k] for k in n)
        out[f"{prefix}_measured_kspace"] = float(measured / sum(n.values()))
        return out

    def best_personalised_state(self) -> dict[str, torch.Tensor]:
        """Global encoder + own decoder of the round with the best validation PSNR (current model before any)."""
        path = self.checkpoint_path("personalised_best")
        if path.exists():
            return torch.load(path, weights_only=True)
        return {k: v.cpu().clone() for k, v in self.model.state_dict().items()}


def build_fedmri_model(config: FedMRIConfig) -> FastMRIUNet:
    """The U-Net every site and the server build from the config (BatchNorm only for the FedBN baseline)."""
    return FastMRIUNet(1, 1, channels=config.channels, num_pools=config.num_pools,
                       norm="batch" if config.algorithm == "fedbn" else "instance")
