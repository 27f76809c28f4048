"""FedMRI's weighted contrastive regulariser between PARAMETER vectors (not features).

For client k in round r (Feng et al., TMI 2022, eq. for L_con; as in the reference code)::

    L_con = sum_l ||theta_k,l - theta_g,l||_1 / (sum_j sum_l ||theta_k,l - theta_j,l^(r-1)||_1 + 1e-14)

- anchor ``theta_k``: the client's current (trainable) encoder parameters;
- positive ``theta_g``: the global encoder the round started from;
- negatives ``theta_j^(r-1)``: every client's local encoder at the end of the previous round, before averaging,
  the client's own included; ``l`` runs over the encoder's tensors.

No temperature, no softmax, no exponent: a plain ratio of L1 distances. The total loss is
``lambda * L_rec + beta * L_con`` with lambda = 1, beta = 100, applied from the second round on and skipped on the
first minibatch of each local epoch (:func:`contrastive_is_active`).

Cheaper variant (``negative_mode="mean"``): the exact form needs N encoder snapshots on every client (~19 MB fp32
each for the 4.7M-parameter encoder). The mean variant sends ONE extra encoder, the mean of the negatives
``theta_bar`` (:func:`mean_state_dict`, computed on the server), and uses ``N * ||theta_k - theta_bar||_1`` as the
denominator. By the triangle inequality this is a lower bound of the exact denominator (equal when all negatives
coincide), so the loss is at least the exact one and keeps the push away from the other clients' encoders, at
1/N of the download. This is our variant, not the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "NEGATIVE_MODES",
    "CONTRASTIVE_EPS",
    "weighted_contrastive_loss",
    "mean_state_dict",
    "contrastive_is_active",
]

NEGATIVE_MODES = ("all", "mean")
CONTRASTIVE_EPS = 1e-14  # the reference's denominator guard


def _check_params(name: str, params: Mapping[str, Tensor], keys: Sequence[str], ref: Mapping[str, Tensor]) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(f"{name} must be a mapping of parameter name to tensor, got {type(params).__name__}")
    missing = [k for k in keys if k not in params]
    if missing:
        raise KeyError(f"{name} lacks encoder keys {missing[:5]!r}{' ...' if len(missing) > 5 else ''}")
    for k in keys:
        t = params[k]
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name}[{k!r}] must be a floating tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.shape != ref[k].shape:
            raise ValueError(f"{name}[{k!r}] has shape {tuple(t.shape)}, expected {tuple(ref[k].shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}[{k!r}] contains NaN or Inf values")


def _l1_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: Sequence[str]) -> Tensor:
    """``sum_l ||a_l - b_l||_1``, differentiable in ``a``; ``b`` is treated as a constant."""
    return torch.stack([(a[k] - b[k].detach().to(a[k].dtype)).abs().sum() for k in keys]).sum()


def weighted_contrastive_loss(
    local: Mapping[str, Tensor],
    positive: Mapping[str, Tensor],
    negatives: Sequence[Mapping[str, Tensor]],
    *,
    keys: Sequence[str] | None = None,
    negative_mode: str = "all",
    num_negatives: int | None = None,
    eps: float = CONTRASTIVE_EPS,
) -> Tensor:
    """FedMRI's weighted contrastive regulariser ``L_con`` (a scalar, differentiable in ``local``).

    Args:
        local: the client's current encoder tensors (e.g. ``dict(model.named_parameters())``); gradients flow here.
        positive: the global encoder the round started from (constant).
        negatives: ``negative_mode="all"``: the N clients' local encoders of the previous round, own included.
            ``negative_mode="mean"``: exactly one mapping, the server's mean of those N encoders.
        keys: the encoder keys to compare; default: every key of ``positive``.
        negative_mode: ``"all"`` (the paper's exact form) or ``"mean"`` (one mean negative, denominator
            ``num_negatives * ||theta_k - theta_bar||_1``).
        num_negatives: N, required with ``negative_mode="mean"``.
        eps: denominator guard (1e-14 as in the reference).

    Returns:
        0-dim tensor ``sum ||theta_k - theta_g||_1 / (denominator + eps)``.
    """
    if negative_mode not in NEGATIVE_MODES:
        raise ValueError(f"negative_mode must be one of {NEGATIVE_MODES}, got {negative_mode!r}")
    if not isinstance(positive, Mapping) or not positive:
        raise ValueError(f"positive must be a non-empty mapping of parameter name to tensor, got {positive!r}")
    keys = list(positive.keys()) if keys is None else list(keys)
    if not keys:
        raise ValueError("keys must name at least one encoder tensor, got an empty list")
    if isinstance(negatives, Mapping) or not isinstance(negatives, Sequence) or len(negatives) == 0:
        raise ValueError(f"negatives must be a non-empty sequence of mappings, got {type(negatives).__name__}")
    if negative_mode == "mean":
        if len(negatives) != 1:
            raise ValueError(f"negative_mode='mean' expects exactly one (mean) negative, got {len(negatives)}")
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive int with negative_mode='mean', got {num_negatives!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    _check_params("positive", positive, keys, positive)
    _check_params("local", local, keys, positive)
    for j, negative in enumerate(negatives):
        _check_params(f"negatives[{j}]", negative, keys, positive)

    numerator = _l1_distance(local, positive, keys)
    if negative_mode == "all":
        denominator = torch.stack([_l1_distance(local, negative, keys) for negative in negatives]).sum()
    else:
        denominator = num_negatives * _l1_distance(local, negatives[0], keys)
    return numerator / (denominator + eps)


def mean_state_dict(
    state_dicts: Sequence[Mapping[str, Tensor]], keys: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Element-wise mean of N parameter mappings: the server's single negative for ``negative_mode="mean"``.

    Args:
        state_dicts: the N clients' encoders (same keys and shapes).
        keys: keys to average; default: every key of the first mapping.
    """
    if isinstance(state_dicts, Mapping) or not isinstance(state_dicts, Sequence) or len(state_dicts) == 0:
        raise ValueError(f"state_dicts must be a non-empty sequence of mappings, got {type(state_dicts).__name__}")
    keys = list(state_dicts[0].keys()) if keys is None else list(keys)
    for j, sd in enumerate(state_dicts):
        _check_params(f"state_dicts[{j}]", sd, keys, state_dicts[0])
    return {k: torch.stack([sd[k].detach() for sd in state_dicts]).mean(dim=0) for k in keys}


def contrastive_is_active(round_index: int, batch_index: int) -> bool:
    """Whether L_con applies: from the second round (``round_index >= 1``, 0-based) and not on the first minibatch
    (``batch_index == 0``) of a local epoch, as in the reference training loop.
    """
    for name, value in (("round_index", round_index), ("batch_index", batch_index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return round_index >= 1 and batch_index > 0
