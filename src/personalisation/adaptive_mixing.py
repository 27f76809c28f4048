"""FedALA-style element-wise adaptive mixing of the global and local main decoder (FedICRA, client side).

Before local training, a client builds its personalised starting model: every shared key is loaded from the
global model, and each main-decoder parameter becomes ``theta_hat = theta_g + (theta_l - theta_g) * W`` with an
element-wise ``W`` in [0, 1] (init 1: start from the local decoder). ``W`` is learnt on local data by plain gradient
steps through ``theta_hat``: ``W <- clip(W - eta * dL/dtheta_hat * (theta_l - theta_g), 0, 1)`` (eta = 1), with
``theta_hat`` recomputed after every batch. The first call repeats epochs until more than ``loss_window`` epochs
ran and the standard deviation of the last ``loss_window`` epoch losses is below ``loss_std_threshold``; later calls
run one epoch. During warm-up (the first 50 local iterations) the client just loads the global model.

Decisions against the reference (see the FedICRA digest):

- ``W`` persists across rounds in this object (the reference resets it every call through an attribute-name
  mismatch), and :meth:`state_dict` / :meth:`load_state_dict` let a learner checkpoint it.
- It refuses to run with gradients disabled, i.e. inside an evaluation pass (the reference also ran it in
  ``evaluate()``, which replaced the personalised model after each evaluation round).
- BN running statistics touched by the W-learning forward passes are restored (FedALA learns on a copy and keeps
  only the mixed parameters, so its buffers stay the global ones).
- The first call's loop is capped at ``max_first_call_epochs`` (FedALA has no cap and can loop forever when the
  loss is noisy); the cap is logged in the returned info.
- ``global_state`` and ``local_state`` are cloned on entry, before the global model is loaded into ``model``: the
  natural call ``personalise(model, global_state, model.state_dict(), ...)`` passes *live* views of the model's
  tensors as ``local_state``, which loading the global model would overwrite (mixing global with global: W never
  moves and nothing is personalised).
- Like the reference (and FedALA), mixing is skipped when the local adaptive parameters equal the global ones
  (e.g. a site that has not trained yet): the mix would be the global model whatever ``W`` is, and the ``W``
  update is zero (``theta_l - theta_g = 0``); the global model is loaded and ``W`` is left as it was.

Direction of ``W``: FedALA writes ``theta_hat = theta_l + (theta_g - theta_l) * W`` (W weighs the *global* model,
W = 1 means "take the global model"); FedICRA's reference and this module write ``theta_hat = theta_g +
(theta_l - theta_g) * W`` (W weighs the *local* model, W = 1 means "keep the local decoder"). The update rule
flips sign accordingly (here ``- eta * grad * (theta_l - theta_g)``), so a W learnt by one is ``1 - W`` of the
other; checkpoints of the two are not interchangeable.

This module has no NVFlare import: a learner calls :meth:`AdaptiveDecoderMixing.personalise`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["AdaptiveDecoderMixing"]


class AdaptiveDecoderMixing:
    """Stateful element-wise mixing weights ``W`` for the adaptive (main-decoder) parameters.

    Args:
        adaptive_keys: parameter names to mix (``fedicra_key_groups(model).adaptive``).
        eta: step size of the ``W`` update (1.0).
        loss_window: number of recent epoch losses checked on the first call (10).
        loss_std_threshold: convergence threshold on their standard deviation (0.1).
        max_first_call_epochs: safety cap on the first call's epochs.
        warmup_iterations: before this many local iterations, only load the global model (50).
        sample_fraction: fraction of the given batches used per epoch (FedALA ``rand_percent`` / 100).
        seed: seed of the batch subsampling.
    """

    def __init__(
        self,
        adaptive_keys: Iterable[str],
        eta: float = 1.0,
        loss_window: int = 10,
        loss_std_threshold: float = 0.1,
        max_first_call_epochs: int = 100,
        warmup_iterations: int = 50,
        sample_fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.adaptive_keys = tuple(sorted(adaptive_keys))
        if not self.adaptive_keys:
            raise ValueError("adaptive_keys must not be empty, got an empty collection")
        if not eta > 0:
            raise ValueError(f"eta must be positive, got {eta!r}")
        if loss_window < 1 or max_first_call_epochs < 1 or warmup_iterations < 0:
            raise ValueError(
                f"loss_window and max_first_call_epochs must be >= 1 and warmup_iterations >= 0, got "
                f"{loss_window!r}, {max_first_call_epochs!r}, {warmup_iterations!r}"
            )
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction!r}")
        self.eta = float(eta)
        self.loss_window = int(loss_window)
        self.loss_std_threshold = float(loss_std_threshold)
        self.max_first_call_epochs = int(max_first_call_epochs)
        self.warmup_iterations = int(warmup_iterations)
        self.sample_fraction = float(sample_fraction)
        self._rng = np.random.default_rng(seed)
        self.weights: dict[str, torch.Tensor] | None = None
        self.first_call_done = False

    # -- pure pieces ------------------------------------------------------------------------------------------
    def mix(self, global_params: Mapping[str, torch.Tensor], local_params: Mapping[str, torch.Tensor]):
        """``theta_hat = theta_g + (theta_l - theta_g) * W`` for every adaptive key (W = 1 if not yet learnt)."""
        self._check_params("global_params", global_params)
        self._check_params("local_params", local_params)
        out = {}
        for k in self.adaptive_keys:
            g, loc = global_params[k].detach(), local_params[k].detach()
            w = self.weights[k] if self.weights is not None else torch.ones_like(g)
            out[k] = g + (loc - g) * w
        return out

    def step(
        self,
        grads: Mapping[str, torch.Tensor],
        global_params: Mapping[str, torch.Tensor],
        local_params: Mapping[str, torch.Tensor],
    ) -> None:
        """One ``W`` update from ``dL/dtheta_hat``: ``W <- clip(W - eta * grad * (theta_l - theta_g), 0, 1)``."""
        self._check_params("grads", grads)
        self._ensure_weights(global_params)
        for k in self.adaptive_keys:
            delta = local_params[k].detach() - global_params[k].detach()
            self.weights[k] = torch.clamp(self.weights[k] - self.eta * grads[k].detach() * delta, 0.0, 1.0)

    # -- the whole client-side procedure ---------------------------------------------------------------------
    def personalise(
        self,
        model: torch.nn.Module,
        global_state: Mapping[str, torch.Tensor],
        local_state: Mapping[str, torch.Tensor],
        batches: Sequence[Any],
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        local_iteration: int,
    ) -> dict[str, Any]:
        """Load the global model into ``model`` and replace its adaptive parameters by the learnt mix.

        Args:
            model: the client's model; keys absent from ``global_state`` (personal ones) are left untouched.
            global_state: aggregated state (shared + adaptive keys) from the server.
            local_state: the client's own state at the end of its previous local training.
            batches: local training batches (a sequence; an epoch is a pass over a sampled subset).
            loss_fn: ``loss_fn(model, batch) -> scalar`` (FedICRA: partial CE of the main logits).
            local_iteration: the client's cumulative local iteration count (for the warm-up).

        Returns:
            info dict: ``mixed`` (bool), ``epochs``, ``losses`` (last-batch loss per epoch), ``capped``.
        """
        if not torch.is_grad_enabled():
            raise RuntimeError(
                "adaptive mixing learns W by backpropagation and must not run during evaluation "
                "(gradients are disabled here)"
            )
        missing = [k for k in self.adaptive_keys if k not in global_state or k not in local_state]
        if missing:
            raise KeyError(f"adaptive keys missing from global_state or local_state: {missing[:5]}")
        model_keys = set(model.state_dict().keys())
        unknown = sorted(set(global_state) - model_keys)
        if unknown:
            raise KeyError(f"global_state has keys the model lacks: {unknown[:5]}")
        # clone before loading: local_state may be live views of the model's own tensors (model.state_dict())
        global_state = {k: v.detach().clone() for k, v in global_state.items()}
        local_state = {k: local_state[k].detach().clone() for k in self.adaptive_keys}
        model.load_state_dict(global_state, strict=False)
        if local_iteration < self.warmup_iterations:
            return {"mixed": False, "epochs": 0, "losses": [], "capped": False}
        if all(torch.equal(global_state[k], local_state[k]) for k in self.adaptive_keys):
            return {"mixed": False, "epochs": 0, "losses": [], "capped": False}  # the reference skips too
        if len(batches) == 0:
            raise ValueError("batches must not be empty: W is learnt on local data")

        params = dict(model.named_parameters())
        self._ensure_weights(global_state)
        self._load(params, self.mix(global_state, local_state))
        flags = {name: p.requires_grad for name, p in params.items()}
        # forward passes in train mode update BN statistics; FedALA learns W on a copy and keeps only the mixed
        # parameters, so the buffers loaded from the global model are restored afterwards
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        for name, p in params.items():
            p.requires_grad_(name in self.adaptive_keys)
        losses: list[float] = []
        capped = False
        try:
            while True:
                loss_value = self._epoch(model, params, global_state, local_state, batches, loss_fn)
                losses.append(loss_value)
                if self.first_call_done:
                    break
                window = losses[-self.loss_window :]
                if len(losses) > self.loss_window and float(np.std(window)) < self.loss_std_threshold:
                    break
                if len(losses) >= self.max_first_call_epochs:
                    capped = True
                    break
        finally:
            for name, p in params.items():
                p.requires_grad_(flags[name])
                p.grad = None
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])
        self.first_call_done = True
        return {"mixed": True, "epochs": len(losses), "losses": losses, "capped": capped}

    def _epoch(self, model, params, global_state, local_state, batches, loss_fn) -> float:
        count = max(1, math.ceil(self.sample_fraction * len(batches)))
        chosen = sorted(self._rng.choice(len(batches), size=count, replace=False)) if count < len(batches) else None
        loss_value = float("nan")
        for idx in chosen if chosen is not None else range(len(batches)):
            for k in self.adaptive_keys:
                params[k].grad = None
            loss = loss_fn(model, batches[idx])
            loss.backward()
            grads = {k: params[k].grad if params[k].grad is not None else torch.zeros_like(params[k])
                     for k in self.adaptive_keys}
            self.step(grads, global_state, local_state)
            self._load(params, self.mix(global_state, local_state))
            loss_value = float(loss.detach())
        return loss_value

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """W and the first-call flag, for checkpoints (W persists across rounds)."""
        weights = None if self.weights is None else {k: v.clone() for k, v in self.weights.items()}
        return {"weights": weights, "first_call_done": self.first_call_done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        weights = state["weights"]
        if weights is not None:
            self._check_params("state['weights']", weights)
            weights = {k: weights[k].clone() for k in self.adaptive_keys}
        self.weights = weights
        self.first_call_done = bool(state["first_call_done"])

    # -- helpers ----------------------------------------------------------------------------------------------
    def _ensure_weights(self, like: Mapping[str, torch.Tensor]) -> None:
        if self.weights is None:
            self.weights = {k: torch.ones_like(like[k].detach()) for k in self.adaptive_keys}

    def _check_params(self, name: str, params: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in self.adaptive_keys if k not in params]
        if missing:
            raise KeyError(f"{name} lacks adaptive keys {missing[:5]}")
        for k in self.adaptive_keys:
            if not torch.isfinite(params[k]).all():
                raise ValueError(f"{name}[{k!r}] contains NaN or infinite values")

    def _load(self, params: Mapping[str, torch.nn.Parameter], values: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in values.items():
                params[k].copy_(v)
