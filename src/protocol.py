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
