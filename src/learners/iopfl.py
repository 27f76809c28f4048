"""IOP-FL inside personalisation on top of the FedAvg learner.

Every round the site trains the received global model for one epoch (theta_k, the only thing it sends), then
updates its private personalised model p_k = alpha * p_k + (1 - alpha) * theta_k
(:func:`src.personalisation.iopfl.personalised_update`). p_k is validated every round next to the global model
(``val_dice_personal`` ...), its best version by validation Dice is kept on the site, and it leaves the site
only through :meth:`export_personalised`, which refuses unless the site opted in (``export_personalised``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import torch

from src.learners.prostate2d import Prostate2DLearner
from src.personalisation.iopfl import personalised_update
from src.protocol import EXPORT_PHASE, ROUTE_PHASE, unpack_experts

__all__ = ["IOPFLLearner", "EXPORT_PHASE", "ROUTE_PHASE"]

log = logging.getLogger(__name__)


class IOPFLLearner(Prostate2DLearner):
    """FedAvg learner that also keeps IOP-FL's personalised model (``config.algorithm`` must be ``iopfl``)."""

    def __init__(self, *args, **kwargs):
        self.personal_state: dict[str, torch.Tensor] | None = None  # before the base init: it may restore them
        self.best_personal_metric = float("-inf")
        super().__init__(*args, **kwargs)
        if self.config.algorithm != "iopfl":
            raise ValueError(f"IOPFLLearner needs config.algorithm 'iopfl', got {self.config.algorithm!r}")

    def end_round(self, metrics: dict[str, float]):
        """After local training: p_k = alpha p_k + (1 - alpha) theta_k, scored on validation, best one kept."""
        self.personal_state = personalised_update(self.personal_state, self.model.state_dict(), self.config.alpha)
        personal = self.evaluate(self.personal_state, split="validation")
        if personal.get(self.key_metric, float("-inf")) > self.best_personal_metric:
            self.best_personal_metric = personal[self.key_metric]
            path = self.checkpoint_path("personal_best")
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.cpu() for k, v in self.personal_state.items()}, path)
        return super().end_round({**metrics, **{f"{k}_personal": v for k, v in personal.items()}})

    def extra_state(self) -> dict:
        return {**super().extra_state(), "personal_state": self.personal_state,
                "best_personal_metric": float(self.best_personal_metric)}

    def load_extra_state(self, state) -> None:
        super().load_extra_state(state)
        self.personal_state = state["personal_state"]
        self.best_personal_metric = float(state["best_personal_metric"])

    def best_personal_state(self) -> dict[str, torch.Tensor]:
        """The personalised model with the best validation Dice so far (the current one before that)."""
        path = self.checkpoint_path("personal_best")
        if path.exists():
            return torch.load(path, weights_only=True)
        if self.personal_state is None:
            raise RuntimeError(f"{self.site}: no personalised model yet (train at least one round)")
        return {k: v.cpu().clone() for k, v in self.personal_state.items()}

    def export_personalised(self) -> dict[str, torch.Tensor]:
        """The best personalised model for routing on an unseen site; only if this site opted in (logged)."""
        if not self.config.export_personalised:
            raise PermissionError(
                f"{self.site}: export of the personalised model is off (config export_personalised=False)"
            )
        log.warning(f"{self.site}: exporting the personalised model (opt-in; more site-revealing than the global)")
        return self.best_personal_state()

    def run_phase(self, phase: str, params: Mapping, meta: Mapping) -> tuple[dict, dict[str, float]]:
        """``export_personalised``: the best personalised model (empty if this site did not opt in);
        ``route``: test-time routing over the received experts on this (held-out) site's whole stream."""
        if phase == EXPORT_PHASE:
            if not self.config.export_personalised:
                log.warning(f"{self.site}: personalised-model export requested but not enabled here; refused")
                return {}, {"export_refused": 1.0}
            return self.export_personalised(), {}
        if phase == ROUTE_PHASE:
            return {}, self.route_on_own_stream(params)
        return super().run_phase(phase, params, meta)

    def route_on_own_stream(self, packed: Mapping) -> dict[str, float]:
        """Outside personalisation on this site: every slice of every split as one unlabelled stream."""
        from src.inference.outside import evaluate_outside
        from src.inference.test_time_routing import RoutingConfig

        experts, global_state = unpack_experts(packed)
        as_tensors = [{k: torch.as_tensor(v) for k, v in e.items()} for e in [*experts, global_state]]
        items = [it for split in ("training", "validation", "testing") for it in self.datalist.get(split, [])]
        cfg = RoutingConfig(passes=self.config.tta_passes, batch_size=self.config.tta_batch_size,
                            seed=self.config.seed)
        scores = evaluate_outside(self.build_model(), as_tensors[-1], as_tensors[:-1], items, cfg)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"{self.site}_outside.json").write_text(json.dumps(scores, indent=2))
        return {f"{method}_{k}": v for method, m in scores.items() for k, v in m.items()}
