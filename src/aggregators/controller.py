"""The server workflow every job uses: NVFlare's FedAvg with extras beside the model, and one recipe for it.

:class:`FederatedFedAvg` is NVFlare's ``FedAvg`` controller with three additions a server rule builds on:

* extras: :meth:`~FederatedFedAvg.round_extras` (one broadcast for all sites) and
  :meth:`~FederatedFedAvg.site_extras` (per site, sent in that site's own task so no other site sees it) ride
  beside the model in the round's task (:func:`src.protocol.pack_payload`); the learner receives them in
  ``begin_round``. The global model itself never holds them;
* the aggregator learns the global model's keys and shapes each round, so it can check every update;
* the trained global model of the last round is kept (:meth:`~FederatedFedAvg.final_global_model`);
  ``PTFileModelPersistor.load_model`` rebuilds the initial model in NVFlare 2.9.

:class:`ControllerRecipe` is ``FedAvgRecipe`` with a ``controller_class`` argument, so an algorithm's server is a
subclass of :class:`FederatedFedAvg` (IOP-FL's outside phase, FedMRI's encoder snapshots), never a copied recipe,
and a checked :class:`~src.aggregators.fedavg.FedAvgAggregator` by default.
"""

from __future__ import annotations

from collections.abc import Mapping

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.app_opt.pt.recipes import FedAvgRecipe

from src.aggregators.fedavg import FedAvgAggregator
from src.protocol import PHASE_KEY, pack_payload
from src.reporting.console import RoundClock

__all__ = ["FederatedFedAvg", "ControllerRecipe"]


class FederatedFedAvg(FedAvg):
    """FedAvg with extras, checked updates and the final global model (see the module docstring).

    Args:
        train_sites: sites that train (all connected sites when empty), e.g. to keep a held-out site out.
    """

    def __init__(self, *args, train_sites: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_sites = list(train_sites or [])
        self._global_model: FLModel | None = None
        self._clock = RoundClock()

    # ---- hooks for server rules ------------------------------------------------------------------------
    def round_extras(self, model: FLModel) -> dict:
        """Named values sent to every site with this round's model (default: none)."""
        return {}

    def site_extras(self, site: str, model: FLModel) -> dict:
        """Named values for ``site`` alone this round (default: none); each site then gets its own task."""
        return {}

    # ---- FedAvg overrides --------------------------------------------------------------------------------
    def sample_clients(self, num_clients: int = None) -> list[str]:
        return list(self.train_sites) if self.train_sites else super().sample_clients(num_clients)

    def send_model(self, task_name: str = "train", data: FLModel = None, targets: list[str] | None = None,
                   min_responses: int = None, timeout: int = 0, callback=None) -> None:
        """The round's task: the global model plus this round's extras (phases and other tasks pass through)."""
        if data is None or task_name != self.task_name or (data.meta or {}).get(PHASE_KEY):
            return super().send_model(task_name, data, targets, min_responses, timeout, callback)
        if hasattr(self.aggregator, "set_reference"):
            self.aggregator.set_reference(data.params)
        targets = targets if targets is not None else self.sample_clients(self.num_clients)
        broadcast = self.round_extras(data)
        per_site = {site: self.site_extras(site, data) for site in targets}
        if not any(per_site.values()):
            return super().send_model(task_name, _with_extras(data, broadcast), targets, min_responses, timeout,
                                      callback)
        for site in targets:
            super().send_model(task_name, _with_extras(data, {**broadcast, **per_site[site]}), [site], None, timeout,
                               callback)

    def update_model(self, model, aggr_result):
        """FedAvg's update, remembering the result: the trained global model."""
        self._global_model = super().update_model(model, aggr_result)
        self._clock.round_done(self.current_round, self.num_rounds, aggr_result.metrics, n_sites=_n_sites(aggr_result))
        return self._global_model

    def final_global_model(self) -> FLModel:
        """The global model after the last round (before any round: the persistor's initial model)."""
        return self._global_model if self._global_model is not None else self.load_model()


def _n_sites(result: FLModel) -> int:
    meta = result.meta or {}
    return len(meta.get("aggregated_sites") or []) or int(meta.get("nr_aggregated") or 0)


def _with_extras(model: FLModel, extras: Mapping) -> FLModel:
    """A shallow copy of ``model`` whose params carry ``extras``; the global model itself is left untouched."""
    if not extras:
        return model
    return FLModel(
        params_type=model.params_type, params=pack_payload(model.params, extras), optimizer_params=None,
        metrics=model.metrics, start_round=model.start_round, current_round=model.current_round,
        total_rounds=model.total_rounds, meta=dict(model.meta or {}),
    )


class ControllerRecipe(FedAvgRecipe):
    """``FedAvgRecipe`` whose controller is ``controller_class`` (a :class:`FederatedFedAvg`) with
    ``controller_args``; the aggregator defaults to a checked :class:`FedAvgAggregator` (steps-weighted).
    """

    def __init__(self, *, controller_class: type[FederatedFedAvg] = FederatedFedAvg,
                 controller_args: Mapping | None = None, **kwargs):
        if not (isinstance(controller_class, type) and issubclass(controller_class, FederatedFedAvg)):
            raise TypeError(f"controller_class must be a FederatedFedAvg subclass, got {controller_class!r}")
        self.controller_class, self.controller_args = controller_class, dict(controller_args or {})
        kwargs.setdefault("aggregator", FedAvgAggregator())
        super().__init__(**kwargs)

    def _create_controller(self, persistor_id: str, model_params, model_aggregator) -> FederatedFedAvg:
        # the one place that mirrors FedAvgRecipe._create_controller (nvflare 2.9), with the class swapped
        return self.controller_class(
            num_clients=self.min_clients,
            num_rounds=self.num_rounds,
            persistor_id=persistor_id,
            model=model_params,
            save_filename=self.save_filename,
            aggregator=model_aggregator,
            stop_cond=self.stop_cond,
            patience=self.patience,
            task_name="train",
            exclude_vars=self.exclude_vars,
            aggregation_weights=self.aggregation_weights,
            memory_gc_rounds=self.server_memory_gc_rounds,
            enable_tensor_disk_offload=self.enable_tensor_disk_offload,
            **self._get_controller_kwargs(),
            **self.controller_args,
        )
