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

Cheaper variant (``negative_mode="linear"``): the exact form needs N encoder snapshots on every client (~18 MiB fp32
each for the 4.7M-parameter encoder). Because L1 is piecewise linear, the denominator
``D(theta) = sum_j ||theta - theta_j||_1`` is exactly linear in each element as long as that element does not cross
any negative, so the server can send, instead of the N snapshots, its value and slope at the round's start point
``theta_g``: the scalar ``D0 = sum_j ||theta_g - theta_j||_1`` and the per-element integer
``s = sum_j sign(theta_g - theta_j)`` in [-N, N] (int8: a quarter of one fp32 encoder). The client uses
``D0 + sum_e s_e (theta_e - theta_g,e)``: equal to the exact denominator until an element crosses a negative, and,
as the tangent of a convex function, never above it (so the loss is never below the exact one). An element where
``theta_g`` equals a negative exactly (a tie, sign 0) is linearised with slope 0 there.

Bounded denominator (fix of a review finding): far from ``theta_g`` the tangent can reach zero or go negative while
the exact denominator stays positive (``theta_g = 0``, negatives ``[1, 1]`` and ``[1, 0.5]``, ``theta = [1, 1]``:
exact loss 4, the bare tangent clamped at 0 gave 2e14 with a gradient of ~1e16). The client therefore uses
``max(tangent, D0 - N * ||theta - theta_g||_1, rho * D0)``: the first two are both lower bounds of the exact
denominator (the second by the triangle inequality, which the client can evaluate because the numerator is
``||theta - theta_g||_1``), and ``rho * D0`` (``linear_floor``, default 0.1) is a trust-region floor relative to the
round-start value. While the floor does not bind the loss is an upper bound of the exact one; where it binds
(the round moved the encoder so far that the tangent lost meaning) the loss is ``num / (rho * D0)``, finite and
with a bounded gradient that pulls the encoder back towards ``theta_g``. Download per
round: 1.25 encoders instead of 1 + N. The clients' snapshots never leave the server, only their sign counts. This
is our variant, not the paper's; :func:`summarize_negatives` is the server side.

Rejected variant, for the record: using the *mean* of the negatives as one negative looks cheap but is degenerate
in FedMRI. With full participation and uniform weights the mean of the previous round's local encoders IS the
global encoder (the positive), so ``||theta - mean||`` equals the numerator and the loss is the constant 1/N with
zero gradient (observed in ``benchmarks/fedmri_variants.py``: identical to no regulariser).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "NEGATIVE_MODES",
    "CONTRASTIVE_EPS",
    "LINEAR_FLOOR",
    "NegativeSummary",
    "summarize_negatives",
    "weighted_contrastive_loss",
    "mean_state_dict",
    "contrastive_is_active",
]

NEGATIVE_MODES = ("all", "linear")
CONTRASTIVE_EPS = 1e-14  # the reference's denominator guard
LINEAR_FLOOR = 0.1  # linear variant: the denominator never drops below this fraction of its round-start value


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


def _check_negative_list(negatives: object) -> None:
    if isinstance(negatives, Mapping) or not isinstance(negatives, Sequence) or len(negatives) == 0:
        raise ValueError(f"negatives must be a non-empty sequence of mappings, got {type(negatives).__name__}")


def _keys_of(positive: Mapping[str, Tensor], keys: Sequence[str] | None) -> list[str]:
    if not isinstance(positive, Mapping) or not positive:
        raise ValueError(f"positive must be a non-empty mapping of parameter name to tensor, got {positive!r}")
    keys = list(positive.keys()) if keys is None else list(keys)
    if not keys:
        raise ValueError("keys must name at least one encoder tensor, got an empty list")
    return keys


def _l1_distance(a: Mapping[str, Tensor], b: Mapping[str, Tensor], keys: Sequence[str]) -> Tensor:
    """``sum_l ||a_l - b_l||_1``, differentiable in ``a``; ``b`` is treated as a constant."""
    return torch.stack([(a[k] - b[k].detach().to(a[k].dtype)).abs().sum() for k in keys]).sum()


@dataclass(frozen=True)
class NegativeSummary:
    """What the server sends instead of N snapshots for ``negative_mode="linear"``.

    Attributes:
        distance: 0-dim float64 tensor, ``D0 = sum_j ||theta_g - theta_j||_1``.
        sign_sum: per key, ``sum_j sign(theta_g - theta_j)`` as int8 (int16 beyond 127 negatives).
        num_negatives: N.
    """

    distance: Tensor
    sign_sum: dict[str, Tensor]
    num_negatives: int

    def nbytes(self) -> int:
        """Payload size in bytes (sign counts plus the scalar)."""
        return sum(t.numel() * t.element_size() for t in self.sign_sum.values()) + self.distance.element_size()


def summarize_negatives(
    positive: Mapping[str, Tensor], negatives: Sequence[Mapping[str, Tensor]], keys: Sequence[str] | None = None
) -> NegativeSummary:
    """Server side of the linear variant: value and slope of the negatives' L1 distance sum at ``positive``.

    Args:
        positive: the global encoder of the new round (``theta_g``).
        negatives: the N clients' local encoders of the previous round, before averaging.
        keys: encoder keys; default: every key of ``positive``.
    """
    keys = _keys_of(positive, keys)
    _check_negative_list(negatives)
    _check_params("positive", positive, keys, positive)
    for j, negative in enumerate(negatives):
        _check_params(f"negatives[{j}]", negative, keys, positive)
    dtype = torch.int8 if len(negatives) <= 127 else torch.int16
    distance = torch.zeros((), dtype=torch.float64)
    sign_sum = {}
    for k in keys:
        g = positive[k].detach().double()
        diffs = torch.stack([g - negative[k].detach().double() for negative in negatives])
        distance = distance + diffs.abs().sum()
        sign_sum[k] = torch.sign(diffs).sum(dim=0).to(dtype)
    return NegativeSummary(distance=distance, sign_sum=sign_sum, num_negatives=len(negatives))


def weighted_contrastive_loss(
    local: Mapping[str, Tensor],
    positive: Mapping[str, Tensor],
    negatives: Sequence[Mapping[str, Tensor]] | NegativeSummary,
    *,
    keys: Sequence[str] | None = None,
    negative_mode: str = "all",
    eps: float = CONTRASTIVE_EPS,
    linear_floor: float = LINEAR_FLOOR,
) -> Tensor:
    """FedMRI's weighted contrastive regulariser ``L_con`` (a scalar, differentiable in ``local``).

    Args:
        local: the client's current encoder tensors (e.g. ``dict(model.named_parameters())``); gradients flow here.
        positive: the global encoder the round started from (constant).
        negatives: ``negative_mode="all"``: the N clients' local encoders of the previous round, own included.
            ``negative_mode="linear"``: the server's :class:`NegativeSummary` of those N encoders around
            ``positive`` (from :func:`summarize_negatives`).
        keys: the encoder keys to compare; default: every key of ``positive``.
        negative_mode: ``"all"`` (the paper's exact form) or ``"linear"`` (the denominator linearised at
            ``positive``; exact until an element crosses a negative).
        eps: denominator guard (1e-14 as in the reference).
        linear_floor: ``negative_mode="linear"`` only: the denominator is at least ``linear_floor * D0`` (the
            round-start value), so the linearised loss stays finite far from ``positive`` (module docstring).

    Returns:
        0-dim tensor ``sum ||theta_k - theta_g||_1 / (denominator + eps)``.
    """
    if negative_mode not in NEGATIVE_MODES:
        raise ValueError(f"negative_mode must be one of {NEGATIVE_MODES}, got {negative_mode!r}")
    keys = _keys_of(positive, keys)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    if not 0 < linear_floor <= 1:
        raise ValueError(f"linear_floor must be in (0, 1], got {linear_floor!r}")
    _check_params("positive", positive, keys, positive)
    _check_params("local", local, keys, positive)
    if negative_mode == "all":
        _check_negative_list(negatives)
        for j, negative in enumerate(negatives):
            _check_params(f"negatives[{j}]", negative, keys, positive)
    else:
        if not isinstance(negatives, NegativeSummary):
            raise TypeError(
                f"negative_mode='linear' expects a NegativeSummary from summarize_negatives, "
                f"got {type(negatives).__name__}"
            )
        missing = [k for k in keys if k not in negatives.sign_sum]
        if missing:
            raise KeyError(f"negatives.sign_sum lacks encoder keys {missing[:5]!r}")

    numerator = _l1_distance(local, positive, keys)
    if negative_mode == "all":
        denominator = torch.stack([_l1_distance(local, negative, keys) for negative in negatives]).sum()
    else:
        slope = torch.stack(
            [
                (negatives.sign_sum[k].to(local[k].dtype) * (local[k] - positive[k].detach().to(local[k].dtype))).sum()
                for k in keys
            ]
        ).sum()
        d0 = negatives.distance.to(numerator.dtype)
        tangent = d0 + slope  # the tangent of a convex function: a lower bound of the exact denominator
        triangle = d0 - negatives.num_negatives * numerator  # another lower bound (triangle inequality)
        floor = (linear_floor * d0).expand_as(tangent)  # trust-region floor relative to the round-start value
        denominator = torch.maximum(torch.maximum(tangent, triangle), floor)
    return numerator / (denominator + eps)


def mean_state_dict(
    state_dicts: Sequence[Mapping[str, Tensor]], keys: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Element-wise uniform mean of N parameter mappings (FedMRI's 1/N server average of the encoders).

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
