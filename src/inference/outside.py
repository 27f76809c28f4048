"""IOP-FL outside personalisation on a held-out site and its comparison points, all on one target stream.

The target site's train+val+test slices form one unlabelled stream in a fixed order (the reference's
``generate_data.py``); labels are used only for scoring. Methods (all ``ood_*`` metrics):

* ``global``: the federated global model as is (eval mode, its running BatchNorm statistics);
* ``uniform_average``: the parameter average of all experts (the global and every personalised model);
* ``bn_adapt``: the global model normalising with the target batch's statistics (no parameter update);
* ``routing_first`` / ``routing_last``: test-time routing over the experts, scored during its first / last pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from src.aggregators.fedavg import weighted_average
from src.inference.test_time_routing import RoutingConfig, copy_with_batch_statistics, predict, run_test_time_routing
from src.metrics.slice_volume import score_slices
from src.models.routed_conv import build_routing_model

__all__ = ["load_stream", "evaluate_outside", "OUTSIDE_METHODS"]

OUTSIDE_METHODS = ("global", "uniform_average", "bn_adapt", "routing_first", "routing_last")


def load_stream(items: Sequence[Mapping]) -> tuple[torch.Tensor, np.ndarray, list[str], list[int]]:
    """(images (N,3,H,W), labels (N,H,W), cases, slices) of datalist items with absolute paths, in order."""
    if not items:
        raise ValueError("the target site's stream is empty (no slices in its datalist)")
    images = torch.stack([torch.from_numpy(np.load(it["image"])) for it in items]).float()
    labels = np.stack([np.load(it["label"])[0] for it in items])
    return images, labels, [it["case"] for it in items], [int(it["slice"]) for it in items]


def evaluate_outside(
    template: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    personal_states: Sequence[Mapping[str, torch.Tensor]],
    items: Sequence[Mapping],
    cfg: RoutingConfig | None = None,
    log: Callable[[int, dict], None] | None = None,
    predictions: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Score every outside method on the target stream; returns ``{method: {ood_dice, ood_hd95, ood_dice2d}}``.

    Args:
        template: a model of the experts' architecture.
        global_state: the federated global model.
        personal_states: every source site's personalised model (the reference's K experts).
        items: the target site's datalist items (train+val+test), absolute paths.
        cfg: test-time routing settings.
        log: ``log(pass_index, loss_parts)`` after each routing pass.
        predictions: if given, filled with each method's label map (N, H, W) on the stream, in ``items`` order
            (for plots next to the labels; the scores are computed from exactly these maps).
    """
    cfg = cfg or RoutingConfig()
    images, labels, cases, slices = load_stream(items)
    experts = [*personal_states, global_state]

    def score(pred: torch.Tensor, method: str) -> dict[str, float]:
        if predictions is not None:
            predictions[method] = pred.cpu()
        return score_slices(pred.cpu().numpy(), labels, cases, slices, prefix="ood")

    out = {}
    model = _with_state(template, global_state)
    out["global"] = score(predict(model, images, cfg.batch_size), "global")
    out["bn_adapt"] = score(predict(copy_with_batch_statistics(model), images, cfg.batch_size), "bn_adapt")
    average = {k: torch.as_tensor(v) for k, v in weighted_average(experts, [1.0] * len(experts)).items()}
    out["uniform_average"] = score(predict(_with_state(template, average), images, cfg.batch_size), "uniform_average")
    routing = build_routing_model(template, experts, global_state)
    passes = run_test_time_routing(routing, images, cfg, log=log)
    out["routing_first"], out["routing_last"] = score(passes[0], "routing_first"), score(passes[-1], "routing_last")
    return out


def _with_state(template: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    import copy

    model = copy.deepcopy(template)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return model.eval()
