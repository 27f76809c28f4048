"""FedICRA site learner (weakly supervised personalised segmentation) and the baselines on the same network.

One round at a site (on top of :class:`~src.learners.base.FederatedLearner`):

1. the received global model is scored on the validation split (no personalisation: :meth:`evaluate` restores
   the model, and :class:`~src.personalisation.adaptive_mixing.AdaptiveDecoderMixing` refuses to run without
   gradients);
2. :meth:`begin_round`: shared keys loaded, the channel selection (personal) kept, a fresh AdamW (its state
   cleared); ``fedicra`` then mixes the main decoder (adaptive keys) with the previous local one, learning the
   element-wise W on local batches (only after ``mixing_warmup`` cumulative iterations);
3. ``iterations_per_round`` iterations of :meth:`train_step`: ``pCE + tree_weight * TEL + crf_weight * gCRF
   (+ lc_weight * site-contrastive for fedicra)``, poly lr on the cumulative iteration count, and the FedRep split
   (``fedicra`` and ``fedrep``: the first ``iterations_per_round - rep_iterations`` iterations update ``out_conv``
   only, the rest every parameter but ``out_conv``);
4. :meth:`end_round`: the local model's adaptive keys cloned (the next round's ``theta_l``), everything but the
   personal keys sent, weighted by the number of training batches (the reference's FedAvg weight).

Persistent state (:meth:`extra_state`, restored on restart): the cumulative iteration count, the previous local
decoder, W and the first-call flag, and the site's index in the federation (checked on restore).

Deviations from the reference (each on purpose; see docs/fedicra.md):

- the channel selection is a registered, trained, personal module (the reference's is a frozen random MLP in a
  Python list); every site initialises the whole network from ``config.seed`` (the job's initial model), so the
  personal module starts identical everywhere;
- W persists across rounds and mixing never runs on evaluation (two reference quirks);
- the site-contrastive term re-runs only the gate on the cached bottleneck (not the whole network in train mode);
- validation split for model selection (the reference selects on test);
- baselines (``fedavg``, ``fedprox``, ``fedbn``, ``fedrep``, ``local``, ``centralised``) use the same network and
  weak loss without the site-contrastive term; the paper does not publish its baselines' losses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.transforms import Compose

from src.config.fedicra import FedICRAConfig
from src.data.fedicra import check_item, load_item, with_label_form
from src.data.validation import DataValidationError
from src.learners.base import FederatedLearner, RoundResult
from src.losses.gated_crf import gated_crf_loss
from src.losses.partial_ce import partial_cross_entropy
from src.losses.site_contrastive import site_contrastive_loss
from src.losses.tree_energy import multiscale_tree_energy_loss
from src.models.unet_multihead import UNetLCMultiHead, fedicra_key_groups
from src.personalisation.adaptive_mixing import AdaptiveDecoderMixing

__all__ = ["FedICRALearner", "RandomRotFlip", "HEAD_PREFIX", "build_fedicra_model", "prepare_site_datalist"]

log = logging.getLogger(__name__)
# NVFlare's INFO root logger would print numba's compiler IR of the tree filter (megabytes per site)
logging.getLogger("numba").setLevel(logging.WARNING)

#: the FedRep head: the main output convolution
HEAD_PREFIX = "decoder.out_conv."


def build_fedicra_model(config: FedICRAConfig, site_index: int = 0) -> UNetLCMultiHead:
    return UNetLCMultiHead(config.in_channels, config.num_classes, num_sites=len(config.federation_sites),
                           site_index=site_index, upsample=config.upsample)


class RandomRotFlip:
    """The reference's training augmentation on ``image`` (C, H, W) and ``label`` (H, W) numpy arrays.

    With p = 0.5 a random multiple of 90 degrees and a flip; otherwise with p = 0.5 a rotation by an integer
    angle in [-45, 44] (nearest neighbour; label fill = ignore index, image fill ``image_fill``).
    """

    def __init__(self, ignore_index: int, image_fill: float) -> None:
        self.ignore_index, self.image_fill = ignore_index, image_fill

    def __call__(self, data: dict) -> dict:
        from scipy import ndimage

        image, label = data["image"], data["label"]
        if np.random.random() > 0.5:
            k, axis = np.random.randint(0, 4), np.random.randint(0, 2)
            image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=axis + 1)
            label = np.flip(np.rot90(label, k), axis=axis)
        elif np.random.random() > 0.5:
            angle = np.random.randint(-45, 45)
            image = ndimage.rotate(image, angle, axes=(1, 2), order=0, reshape=False, cval=self.image_fill)
            label = ndimage.rotate(label, angle, order=0, reshape=False, cval=self.ignore_index)
        return {**data, "image": np.ascontiguousarray(image), "label": np.ascontiguousarray(label)}


def _to_tensors(data: dict) -> dict:
    return {**data, "image": torch.as_tensor(data["image"], dtype=torch.float32),
            "label": torch.as_tensor(data["label"], dtype=torch.int64)}


def prepare_site_datalist(config: FedICRAConfig, site: str, datalist: Mapping[str, list[dict]] | None = None):
    """Point ``site``'s training items at its label form, then check every item before any training: readable,
    the form's sparse map present, channel count, image/label size, label values in {classes, ignore}.

    ``datalist`` (absolute paths, changed in place) defaults to ``config``'s datalist of ``site``. Returns it.
    Raises :class:`DataValidationError` naming the site, split, index and file.
    """
    if datalist is None:
        from src.data.datalist import load_site_datalist

        datalist = load_site_datalist(config.site_datalist(site), config.site_data_root())
    form = config.label_form(site)
    datalist["training"][:] = [with_label_form(item, form) for item in datalist["training"]]
    for split, items in datalist.items():
        for i, item in enumerate(items):
            check_item(item, config.num_classes, config.in_channels, sparse=split == "training" and form != "mask",
                       where=f"{site} {split}[{i}]")
    return datalist


class FedICRALearner(FederatedLearner):
    """FedICRA and its baselines (``config.algorithm``); see the module docstring."""

    key_metric = "val_dice"
    config: FedICRAConfig

    def __init__(self, site: str, config: FedICRAConfig, output_dir=".", device=None):
        # set before the base init: build_model needs the index, and restore() fills the state below
        self.site_index = 0 if config.algorithm == "centralised" else config.site_index(site)
        self.iteration = 0  # cumulative local iterations (poly lr, mixing warm-up)
        self.previous_local: dict[str, torch.Tensor] | None = None
        self.mixer: AdaptiveDecoderMixing | None = None
        if config.algorithm == "fedicra":
            self.mixer = AdaptiveDecoderMixing(
                fedicra_key_groups(build_fedicra_model(config)).adaptive, eta=config.mixing_eta,
                loss_window=config.mixing_loss_window, loss_std_threshold=config.mixing_std_threshold,
                max_first_call_epochs=config.mixing_max_first_epochs, warmup_iterations=config.mixing_warmup,
                seed=config.seed,
            )
        self.mixing_info: dict = {}
        self._round_iteration = 0
        super().__init__(site, config, output_dir, device)
        # one round = iterations_per_round batches (the loader is cycled), not a pass over the data
        self.trainer.state.epoch_length = config.iterations_per_round

    # ---- model, data, loss ------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        # the same initial weights at every site and in the job's initial model (the job seeds the same way),
        # so the personal channel selection starts from one seeded initialisation everywhere
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            return build_fedicra_model(self.config, self.site_index)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.config.lr, betas=(0.9, 0.999),
                                 weight_decay=self.config.weight_decay)

    def build_loss(self) -> torch.nn.Module:
        return torch.nn.Identity()  # the loss is composed in train_step

    def build_metrics(self, prefix: str) -> dict:
        raise NotImplementedError("scored per image by score(): Dice and HD95 per structure")

    def check_data(self, datalist: Mapping[str, list[dict]]) -> None:
        """:func:`prepare_site_datalist`: the site's label form, every item checked (file named on error)."""
        prepare_site_datalist(self.config, self.site, datalist)
        log.info(f"{self.site}: training label form {self.config.label_form(self.site)!r}, "
                 f"site index {self.site_index}")

    def transforms(self, stage: str) -> Compose:
        steps = [load_item]
        if stage == "training" and self.config.augment:
            steps.append(RandomRotFlip(self.config.num_classes, 0.8 if self.config.task == "faz" else 0.0))
        return Compose([*steps, _to_tensors])

    # ---- which keys stay ---------------------------------------------------------------------------------
    @classmethod
    def personal_keys_of(cls, model, config) -> list[str]:
        if config.algorithm == "fedicra":
            return sorted(fedicra_key_groups(model).personal)
        if config.algorithm == "fedrep":
            return [k for k in model.state_dict() if k.startswith(HEAD_PREFIX)]
        return super().personal_keys_of(model, config)

    @classmethod
    def adaptive_keys_of(cls, model, config) -> list[str]:
        return sorted(fedicra_key_groups(model).adaptive) if config.algorithm == "fedicra" else []

    # ---- round -------------------------------------------------------------------------------------------
    def begin_round(self, params: Mapping, extras: Mapping) -> None:
        """Load the global model (local: keep the own one), clear AdamW, and (fedicra) mix the main decoder."""
        if self.config.algorithm == "local":
            params = {}
        super().begin_round(params, extras)
        self.optimizer.state.clear()  # a fresh AdamW every round, as the reference
        self._round_iteration = 0
        self.mixing_info = {}
        if self.mixer is not None and params and self.previous_local is not None:
            sent = self.key_groups.sent
            global_state = {k: torch.as_tensor(v).to(self.device) for k, v in params.items() if k in sent}
            self.mixing_info = self.mixer.personalise(
                self.model, global_state, self.previous_local, self._mixing_batches(), self._mixing_loss,
                self.iteration)

    def _mixing_batches(self) -> list:
        limit = self.config.mixing_batches or len(self.train_loader)
        batches = []
        for batch in self.train_loader:
            batches.append((batch["image"].to(self.device), batch["label"].to(self.device)))
            if len(batches) >= limit:
                break
        return batches

    def _mixing_loss(self, model, batch) -> torch.Tensor:
        image, label = batch
        return partial_cross_entropy(model(image).logits, label, self.config.num_classes)

    def current_lr(self) -> float:
        cfg = self.config
        return cfg.lr * max(0.0, 1.0 - self.iteration / cfg.total_iterations) ** cfg.poly_power

    def _split_phase(self) -> str | None:
        """``head`` / ``body`` under the FedRep split (fedicra, fedrep), else None."""
        if self.config.algorithm not in ("fedicra", "fedrep"):
            return None
        head_iters = self.config.iterations_per_round - self.config.rep_iterations
        return "head" if self._round_iteration < head_iters else "body"

    def loss_terms(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term of the local loss on one batch (weights applied in :meth:`train_step`)."""
        cfg, out = self.config, self.model(image)
        terms = {"pce": partial_cross_entropy(out.logits, label, cfg.num_classes)}
        if cfg.tree_weight > 0:
            terms["tree"] = multiscale_tree_energy_loss(out.logits, image, out.aux_logits, label == cfg.num_classes,
                                                        weight=cfg.tree_weight)
        if cfg.crf_weight > 0:
            terms["crf"] = cfg.crf_weight * gated_crf_loss(torch.softmax(out.logits, 1), image, cfg.crf_radius,
                                                           cfg.crf_sigma_xy, cfg.crf_sigma_rgb)
        if cfg.algorithm == "fedicra" and cfg.lc_weight > 0:
            terms["lc"] = cfg.lc_weight * site_contrastive_loss(self.model.channel_selection, out.bottleneck,
                                                                out.gate, self.site_index)
        return terms

    def train_step(self, engine, batch: Mapping) -> dict:
        """One local iteration: the weak loss, the poly lr, the FedRep split, AdamW (FedProx penalty if set)."""
        self.model.train()
        image, label = batch["image"].to(self.device), batch["label"].to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        terms = self.loss_terms(image, label)
        loss = sum(terms.values()) + self.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        phase = self._split_phase()
        if phase is not None:
            for name, p in self.model.named_parameters():
                if name.startswith(HEAD_PREFIX) != (phase == "head"):
                    p.grad = None  # AdamW skips parameters without a gradient (no decay either)
        self.optimizer.step()
        self.iteration += 1
        self._round_iteration += 1
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}

    def end_round(self, metrics: dict[str, float]) -> RoundResult:
        if self.mixer is not None:  # the next round's theta_l: the decoder right after local training
            state = self.model.state_dict()
            self.previous_local = {k: state[k].detach().clone() for k in self.mixer.adaptive_keys}
        extra = {"lr": self.current_lr(), "iteration": float(self.iteration)}
        if self.mixing_info:
            extra |= {"mixing_epochs": float(self.mixing_info["epochs"]),
                      "mixing_w_mean": float(np.mean([w.float().mean().item() for w in self.mixer.weights.values()]))
                      if self.mixer.weights else 1.0}
        result = super().end_round({**metrics, **{f"train_{k}": v for k, v in extra.items()}})
        result.num_steps = len(self.train_loader)  # the reference's FedAvg weight: number of training batches
        return result

    # ---- persistent state --------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {**super().extra_state(), "fedicra": {
            "iteration": self.iteration, "site_index": self.site_index,
            "federation_sites": list(self.config.federation_sites),
            "previous_local": None if self.previous_local is None else {
                k: v.detach().cpu().clone() for k, v in self.previous_local.items()},
            "mixer": None if self.mixer is None else self.mixer.state_dict(),
        }}

    def load_extra_state(self, state) -> None:
        super().load_extra_state(state)
        own = state["fedicra"]
        if list(own["federation_sites"]) != list(self.config.federation_sites) or own["site_index"] != self.site_index:
            raise ValueError(f"{self.site}: saved state has federation {own['federation_sites']} (index "
                             f"{own['site_index']}), config has {list(self.config.federation_sites)} "
                             f"(index {self.site_index}); the site -> index map must not change")
        self.iteration = int(own["iteration"])
        self.previous_local = None if own["previous_local"] is None else {
            k: v.to(self.device) for k, v in own["previous_local"].items()}
        if self.mixer is not None and own["mixer"] is not None:
            self.mixer.load_state_dict(own["mixer"])

    # ---- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_scores(self, split: str) -> list[dict]:
        """Per-image Dice and HD95 (pixels) of the current model on ``split``: FAZ ``faz``; ODOC ``cup`` (label
        1) and ``disc`` (label >= 1). An empty prediction of a present structure gets HD95 = the image diagonal."""
        loaders = self.__dict__.setdefault("_eval_loaders", {})
        if split not in loaders:
            loaders[split] = self._loader(split)
        self.model.eval()
        rows = []
        for batch in loaders[split]:
            pred = self.model(batch["image"].to(self.device)).logits.argmax(1).cpu()
            label = batch["label"]
            for b in range(pred.shape[0]):
                row = {"case_id": batch.get("case_id", [f"{len(rows)}"])[b]}
                for name, (p, g) in self._structures(pred[b], label[b]).items():
                    row[f"dice_{name}"], row[f"hd95_{name}"] = _dice_hd95(p, g)
                rows.append(row)
        return rows

    def _structures(self, pred: torch.Tensor, label: torch.Tensor) -> dict:
        if self.config.task == "faz":
            return {"faz": (pred == 1, label == 1)}
        return {"cup": (pred == 1, label == 1), "disc": (pred >= 1, (label >= 1) & (label < 3))}

    def score(self, split: str) -> dict[str, float]:
        """Means over images: ``{prefix}_dice`` / ``{prefix}_hd95`` (ODOC: mean of cup and disc) and per structure."""
        rows = self.image_scores(split)
        if not rows:
            raise DataValidationError(f"{self.site}: split {split!r} is empty")
        prefix = "val" if split == "validation" else "test"
        keys = [k for k in rows[0] if k != "case_id"]
        out = {f"{prefix}_{k}": float(np.mean([r[k] for r in rows])) for k in keys}
        out[f"{prefix}_dice"] = float(np.mean([out[f"{prefix}_{k}"] for k in keys if k.startswith("dice_")]))
        out[f"{prefix}_hd95"] = float(np.mean([out[f"{prefix}_{k}"] for k in keys if k.startswith("hd95_")]))
        return out


def _dice_hd95(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """MONAI Dice and HD95 of two binary (H, W) masks; both empty -> (1, 0); one empty -> HD95 = diagonal."""
    p, g = pred[None, None].float(), gt[None, None].float()
    dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
    if not p.any() and not g.any():
        return dice, 0.0
    if not p.any() or not g.any():
        return dice, float(math.hypot(*pred.shape))
    return dice, float(compute_hausdorff_distance(p, g, include_background=True, percentile=95)[0, 0])
