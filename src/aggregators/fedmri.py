"""Server side of FedMRI (Feng et al., TMI 2022): uniform average of the shared encoder, negatives for L_con.

:class:`EncoderAverageAggregator` is the checked :class:`~src.aggregators.fedavg.FedAvgAggregator` with FedMRI's
rule: a **uniform** 1/N average (the paper's; no weighting by samples or steps) of the keys the round's global
model holds, which :class:`FedMRIFedAvg` restricts to the shared keys (the encoder), so an update carrying any
other key (a decoder tensor) is dropped with a logged reason. It also keeps every site's pre-average update of the
last aggregated round (``previous_updates``) and whether that site agreed to have it relayed
(:data:`~src.protocol.FEDMRI_RELAY_META`), outside the stats that NVFlare resets every round.

:class:`FedMRIFedAvg` is :class:`~src.aggregators.controller.FederatedFedAvg` that

* sends only the shared keys of the global model (the decoder never travels, in either direction);
* adds, through :meth:`round_extras`, what the regulariser needs in round r >= 2 (nothing in round 1, so L_con is
  off there): ``negatives="linear"``: the sign counts and distance sum of the N previous local encoders around the
  new global encoder (:func:`src.losses.weighted_contrastive.summarize_negatives`; an aggregate, int8);
  ``negatives="exact"``: the N snapshots themselves, only when the server opted in (``relay_snapshots``) **and**
  every site of the previous round opted in through its own config; otherwise nothing is sent (L_con off) and the
  reason is logged. Relays are logged with the sites whose encoders were revealed. The extras never enter the
  global model (:func:`~src.aggregators.controller._with_extras` copies it).

Deviation: the paper's server keeps the encoders of the *previous* round and the sites need them at the start of the
next one; here the summary is computed around the new global encoder (the positive the sites start from), which is
exactly what the client's linearisation needs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nvflare.app_common.abstract.fl_model import FLModel

from src.aggregators.controller import ControllerRecipe, FederatedFedAvg
from src.aggregators.fedavg import FedAvgAggregator, _as_numpy, weighted_average
from src.protocol import FEDMRI_RELAY_META, NUM_STEPS_KEY, PHASE_KEY, pack_negatives

__all__ = ["EncoderAverageAggregator", "FedMRIFedAvg", "FedMRIRecipe", "NEGATIVES", "uniform_average",
           "linear_negatives"]

NEGATIVES = ("exact", "linear", "none")

log = logging.getLogger(__name__)


def uniform_average(states: list[Mapping]) -> dict:
    """FedMRI's server rule: the element-wise 1/N mean of the sites' shared keys."""
    return weighted_average(states, [1.0] * len(states))


class EncoderAverageAggregator(FedAvgAggregator):
    """Checked uniform FedAvg of the shared keys; keeps the pre-average updates of the last round.

    Args:
        min_updates: fewest usable updates a round needs.
    """

    def __init__(self, min_updates: int = 1):
        self.previous_updates: dict[str, dict] = {}
        self.previous_consent: dict[str, bool] = {}
        self.received_keys: dict[str, set[str]] = {}  # every key each site ever sent (the traffic record)
        super().__init__(weight_key=NUM_STEPS_KEY, min_updates=min_updates)  # the weight is only checked

    def accept_model(self, model) -> None:
        site = (model.meta or {}).get("client_name", "unknown site")
        self.received_keys.setdefault(site, set()).update(model.params or {})
        before = len(self._updates)
        super().accept_model(model)
        if len(self._updates) > before:  # accepted: FedMRI weighs every site 1/N, whatever it claimed
            site, params, _, metrics = self._updates[-1]
            self._updates[-1] = (site, params, 1.0, metrics)
            self._consent[site] = bool((model.meta or {}).get(FEDMRI_RELAY_META, False))

    def reset_stats(self) -> None:
        super().reset_stats()
        self._consent: dict[str, bool] = {}

    def _majority_key_set(self):
        self._kept = super()._majority_key_set()  # not cleared by reset_stats: aggregate_model reads it after
        return self._kept

    def aggregate_model(self):
        consent = dict(self._consent)
        self._kept = []
        result = super().aggregate_model()
        kept = self._kept
        result.meta["weights"] = "uniform"
        self.previous_updates = {site: {k: _as_numpy(v).copy() for k, v in p.items()} for site, p, _, _ in kept}
        self.previous_consent = {site: consent.get(site, False) for site in self.previous_updates}
        return result


class FedMRIFedAvg(FederatedFedAvg):
    """FedMRI's server (module docstring).

    Args:
        shared_keys: the keys that travel (the encoder); empty: every key of the global model.
        negatives: ``exact`` (N snapshots, double opt-in), ``linear`` (sign-count summary) or ``none`` (no L_con).
        relay_snapshots: the server's side of the opt-in to relay the sites' encoder snapshots (exact only).
    """

    def __init__(self, *args, shared_keys: list[str] | None = None, negatives: str = "linear",
                 relay_snapshots: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.shared_keys = list(shared_keys or [])
        self.negatives, self.relay_snapshots = negatives, relay_snapshots
        self.extras_bytes: list[int] = []  # per round: bytes of the extras sent to each site
        self.model_bytes: list[int] = []  # per round: bytes of the model params sent to each site

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._write_traffic()

    def _write_traffic(self) -> None:
        """``fedmri_traffic.json`` in the run folder: keys each site sent, bytes sent to each site per round."""
        import json
        from pathlib import Path

        try:
            run_dir = Path(self.engine.get_workspace().get_run_dir(self.fl_ctx.get_job_id()))
        except Exception:
            run_dir = Path.cwd()
        received = {s: sorted(k) for s, k in getattr(self.aggregator, "received_keys", {}).items()}
        out = {"negatives": self.negatives, "relay_snapshots": self.relay_snapshots, "shared_keys": self.shared_keys,
               "received_keys": received, "model_bytes_per_round": self.model_bytes,
               "extras_bytes_per_round": self.extras_bytes}
        (run_dir / "fedmri_traffic.json").write_text(json.dumps(out, indent=2))

    def send_model(self, task_name: str = "train", data: FLModel = None, targets: list[str] | None = None,
                   min_responses: int = None, timeout: int = 0, callback=None) -> None:
        if data is not None and task_name == self.task_name and self.shared_keys and data.params:
            data = FLModel(params_type=data.params_type, params=_select(data.params, self.shared_keys),
                           optimizer_params=None, metrics=data.metrics, start_round=data.start_round,
                           current_round=data.current_round, total_rounds=data.total_rounds,
                           meta=dict(data.meta or {}))
        training = data is not None and task_name == self.task_name and bool(data.params) and \
            not (data.meta or {}).get(PHASE_KEY)
        self._extras_nbytes = 0
        super().send_model(task_name, data, targets, min_responses, timeout, callback)
        if training:
            self.model_bytes.append(sum(_nbytes(v) for v in data.params.values()))
            self.extras_bytes.append(self._extras_nbytes)

    def round_extras(self, model: FLModel) -> dict:
        previous = getattr(self.aggregator, "previous_updates", {})
        if self.negatives == "none" or not previous:
            return {}  # round 1 (or no regulariser): L_con off
        sites = sorted(previous)
        snapshots = [previous[s] for s in sites]
        if self.negatives == "exact":
            refused = [s for s in sites if not self.aggregator.previous_consent.get(s)]
            if not self.relay_snapshots:
                self._say("exact negatives need relay_snapshots at the server: not relaying, L_con off this round")
                return {}
            if refused:
                self._say(f"sites {refused} did not opt in to relaying their encoder snapshot: L_con off this round")
                return {}
            self._say(f"relaying the pre-average encoder snapshots of {sites} to every site (opt-in of all)")
            extras = pack_negatives("exact", snapshots=[_as_array_like(s, model.params) for s in snapshots])
        else:
            extras = linear_negatives(model.params, snapshots)
        self._extras_nbytes = sum(_nbytes(v) for v in extras.values())
        return extras

    def _say(self, message: str) -> None:
        if getattr(self, "fl_ctx", None) is not None:
            self.warning(message)
        else:
            log.warning(message)


def linear_negatives(global_params: Mapping, snapshots: list[Mapping]) -> dict:
    """The linear variant's extras: the sign counts and L1 distance sum of ``snapshots`` around the new global
    encoder (the keys of the snapshots), as :func:`src.protocol.pack_negatives` packs them."""
    import torch

    from src.losses.weighted_contrastive import summarize_negatives

    keys = list(snapshots[0])
    positive = {k: torch.as_tensor(_as_numpy(global_params[k])).double() for k in keys}
    summary = summarize_negatives(
        positive, [{k: torch.as_tensor(_as_numpy(s[k])).double() for k in keys} for s in snapshots], keys)
    return pack_negatives("linear", distance=summary.distance.reshape(1).numpy(),
                          sign_sum={k: v.numpy() for k, v in summary.sign_sum.items()},
                          num_negatives=summary.num_negatives)


def _select(params: Mapping, keys: list[str]) -> dict:
    missing = [k for k in keys if k not in params]
    if missing:
        raise KeyError(f"the global model lacks shared keys {missing[:5]}")
    return {k: params[k] for k in keys}


def _as_array_like(state: Mapping, like: Mapping) -> dict:
    """``state`` in the container type of the global model's params (torch tensors or numpy arrays)."""
    first = next(iter(like.values()))
    if hasattr(first, "detach"):
        import torch

        return {k: torch.as_tensor(v) for k, v in state.items()}
    return dict(state)


def _nbytes(value) -> int:
    array = _as_numpy(value)
    return int(array.size * array.itemsize)


class FedMRIRecipe(ControllerRecipe):
    """:class:`ControllerRecipe` with :class:`FedMRIFedAvg` and :class:`EncoderAverageAggregator`."""

    def __init__(self, *, shared_keys: list[str] | None = None, negatives: str = "linear",
                 relay_snapshots: bool = False, **kwargs):
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        args = {"shared_keys": list(shared_keys or []), "negatives": negatives, "relay_snapshots": relay_snapshots}
        kwargs["aggregator"] = EncoderAverageAggregator()
        super().__init__(controller_class=FedMRIFedAvg, controller_args=args, **kwargs)
