"""Everything that crosses the wire between the server and a site: meta keys, task phases, extras.

Server code (``src/aggregators``) and site code (``src/learners``) both import this module and nothing of each
other. It imports neither torch nor NVFlare, so job scripts can use it cheaply.

Extras ride beside the model in the same ``params`` dict, under reserved key prefixes, so large tensors use
NVFlare's tensor transport and the stock Client API executor needs no extra task:

* ``__extra__/<name>``: one value broadcast to every site;
* ``__extra__@<site>/<name>``: a value meant for ``<site>`` only (other sites drop it on receipt; a value that
  must stay secret from the other sites goes in a per-site task instead, see
  :meth:`src.aggregators.controller.FederatedFedAvg.site_extras`).

:func:`pack_payload` builds such a dict and :func:`unpack_payload` splits it back into model params and the
extras one site may see.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "NUM_STEPS_KEY",
    "TRAIN_SAMPLES_KEY",
    "ROUND_ERROR_KEY",
    "PHASE_KEY",
    "SITE_KEY",
    "EXPORT_PHASE",
    "ROUTE_PHASE",
    "EXTRA_PREFIX",
    "pack_payload",
    "unpack_payload",
    "pack_experts",
    "unpack_experts",
    "FEDMRI_RELAY_META",
    "pack_negatives",
    "unpack_negatives",
]

#: meta key of a training result: local optimisation steps this round (NVFlare's ``FLMetaKey.NUM_STEPS_CURRENT_ROUND``)
NUM_STEPS_KEY = "NUM_STEPS_CURRENT_ROUND"
#: meta key of a training result: training samples this round saw once (the FedAvg weight n_k)
TRAIN_SAMPLES_KEY = "NUM_TRAIN_SAMPLES"
#: meta key of a training result: why the site sends no usable update this round (e.g. a non-finite loss)
ROUND_ERROR_KEY = "ROUND_ERROR"
#: meta key of a server request that is not a training round (a controller's extra phase, e.g. IOP-FL's export)
PHASE_KEY = "TASK_PHASE"
#: meta key naming the site that sent a reply
SITE_KEY = "site"
#: IOP-FL: ask a source site for its personalised model (double opt-in)
EXPORT_PHASE = "export_personalised"
#: IOP-FL: run test-time routing on a held-out site over the relayed experts
ROUTE_PHASE = "route"

EXTRA_PREFIX = "__extra__"


def _site_prefix(site: str) -> str:
    if not site or "/" in site:
        raise ValueError(f"site name must be non-empty and contain no '/', got {site!r}")
    return f"{EXTRA_PREFIX}@{site}/"


def pack_payload(
    params: Mapping[str, Any],
    extras: Mapping[str, Any] | None = None,
    site_extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One flat params dict: the model's ``params`` plus broadcast ``extras`` and per-site ``site_extras``.

    Raises:
        ValueError: a model key already uses the reserved prefix, or an extra's name contains ``/`` or is empty.
    """
    reserved = [k for k in params if k.startswith(EXTRA_PREFIX)]
    if reserved:
        raise ValueError(f"model keys must not start with {EXTRA_PREFIX!r}: {reserved[:3]}")
    out = dict(params)
    for name, value in (extras or {}).items():
        out[f"{EXTRA_PREFIX}/{_check_name(name)}"] = value
    for site, values in (site_extras or {}).items():
        prefix = _site_prefix(site)
        for name, value in values.items():
            out[prefix + _check_name(name)] = value
    return out


def unpack_payload(payload: Mapping[str, Any] | None, site: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model params, extras for site)``: broadcast extras and ``site``'s own; other sites' entries dropped.

    A per-site extra overrides a broadcast extra of the same name.
    """
    params, broadcast, own = {}, {}, {}
    mine = _site_prefix(site)
    for key, value in (payload or {}).items():
        if not key.startswith(EXTRA_PREFIX):
            params[key] = value
        elif key.startswith(f"{EXTRA_PREFIX}/"):
            broadcast[key[len(EXTRA_PREFIX) + 1:]] = value
        elif key.startswith(mine):
            own[key[len(mine):]] = value
        elif not key.startswith(f"{EXTRA_PREFIX}@"):
            raise KeyError(f"malformed extra key {key!r} (expected {EXTRA_PREFIX}/<name> or {EXTRA_PREFIX}@<site>/...)")
    return params, {**broadcast, **own}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"extra names must be non-empty strings, got {name!r}")
    return name


def pack_experts(personal: list[Mapping], global_params: Mapping) -> dict:
    """One flat params dict: ``expert<i>/<key>`` for each personalised model, ``global/<key>`` for the global."""
    packed = {f"global/{k}": v for k, v in global_params.items()}
    for i, state in enumerate(personal):
        packed.update({f"expert{i}/{k}": v for k, v in state.items()})
    return packed


def unpack_experts(packed: Mapping) -> tuple[list[dict], dict]:
    """Inverse of :func:`pack_experts`: (personalised states in order, global state)."""
    experts: dict[int, dict] = {}
    global_params = {}
    for name, v in packed.items():
        prefix, _, key = name.partition("/")
        if prefix == "global":
            global_params[key] = v
        elif prefix.startswith("expert") and prefix[6:].isdigit():
            experts.setdefault(int(prefix[6:]), {})[key] = v
        else:
            raise KeyError(f"unexpected packed expert key {name!r}")
    if not global_params:
        raise KeyError("packed experts hold no 'global/...' keys")
    return [experts[i] for i in sorted(experts)], global_params


#: FedMRI: meta flag of a site's training result: the site agrees that the server relays its encoder snapshot
FEDMRI_RELAY_META = "fedmri_relay_snapshot"
_NEG = "fedmri_negatives"


def pack_negatives(mode: str, *, snapshots: list[Mapping] | None = None, distance: Any = None,
                   sign_sum: Mapping | None = None, num_negatives: int | None = None) -> dict[str, Any]:
    """FedMRI's regulariser inputs as flat extras: ``exact``: the N snapshots; ``linear``: the summary."""
    if mode == "exact":
        if not snapshots:
            raise ValueError("exact negatives need at least one snapshot")
        out: dict[str, Any] = {f"{_NEG}/mode/exact": 1}
        for j, snap in enumerate(snapshots):
            out.update({f"{_NEG}/snapshot{j}/{k}": v for k, v in snap.items()})
        return out
    if mode == "linear":
        if distance is None or not sign_sum or not num_negatives:
            raise ValueError("linear negatives need distance, sign_sum and num_negatives")
        out = {f"{_NEG}/mode/linear": 1, f"{_NEG}/distance": distance, f"{_NEG}/num_negatives": int(num_negatives)}
        out.update({f"{_NEG}/sign/{k}": v for k, v in sign_sum.items()})
        return out
    raise ValueError(f"negatives mode must be 'exact' or 'linear', got {mode!r}")


def unpack_negatives(extras: Mapping[str, Any]) -> tuple[str, Any] | None:
    """Inverse of :func:`pack_negatives`: ``("exact", [snapshot, ...])``, ``("linear", {distance, sign_sum,
    num_negatives})`` or None when the extras carry no negatives (round 1, L_con off)."""
    if f"{_NEG}/mode/exact" in extras:
        snaps: dict[int, dict] = {}
        for key, value in extras.items():
            if key.startswith(f"{_NEG}/snapshot"):
                index, _, name = key[len(f"{_NEG}/snapshot"):].partition("/")
                snaps.setdefault(int(index), {})[name] = value
        if not snaps:
            raise KeyError("exact negatives announced but no snapshot in the extras")
        return "exact", [snaps[i] for i in sorted(snaps)]
    if f"{_NEG}/mode/linear" in extras:
        sign = {k[len(f"{_NEG}/sign/"):]: v for k, v in extras.items() if k.startswith(f"{_NEG}/sign/")}
        return "linear", {"distance": extras[f"{_NEG}/distance"], "sign_sum": sign,
                          "num_negatives": int(extras[f"{_NEG}/num_negatives"])}
    return None
