"""Server side of the IOP-FL job: FedAvg on the source sites, then opt-in routing on a held-out site.

:class:`IOPFLFedAvg` is NVFlare's ``FedAvg`` controller with two additions:

* only ``train_sites`` train (a held-out ``ood_site`` is connected but never receives the model to train);
* after the last round, when ``ood_site`` is set **and** ``export_personalised`` is on, it asks every source
  site for its personalised model (each site must also have opted in through its own config; refusals are
  logged and skipped), relays them with the global model to ``ood_site`` and stores the site's outside scores
  in ``iopfl_outside.json`` in the server's run folder. Personalised models are more site-revealing than the
  global model (membership inference), hence the double opt-in and the warning in the server log.

Both extra requests reuse the ``train`` task with a ``TASK_PHASE`` meta entry, so the stock Client API
executor needs no extra task names. :class:`IOPFLRecipe` is ``FedAvgRecipe`` with this controller.
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.app_opt.pt.recipes import FedAvgRecipe

from src.learners.iopfl import EXPORT_PHASE, ROUTE_PHASE
from src.learners.protocol import PHASE_KEY

__all__ = ["IOPFLFedAvg", "IOPFLRecipe", "EXPORT_PHASE", "ROUTE_PHASE", "pack_experts", "unpack_experts"]

SITE_KEY = "site"


def pack_experts(personal: list[dict], global_params: dict) -> dict:
    """One flat params dict: ``expert<i>/<key>`` for each personalised model, ``global/<key>`` for the global."""
    packed = {f"global/{k}": v for k, v in global_params.items()}
    for i, state in enumerate(personal):
        packed.update({f"expert{i}/{k}": v for k, v in state.items()})
    return packed


def unpack_experts(packed: dict) -> tuple[list[dict], dict]:
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


class IOPFLFedAvg(FedAvg):
    """FedAvg over ``train_sites`` followed by the optional outside phase (see the module docstring).

    Args:
        train_sites: sites that train (all connected sites when empty).
        ood_site: held-out site for test-time routing ("" for none).
        export_personalised: the server's side of the opt-in to relay personalised models.
    """

    def __init__(self, *args, train_sites: list[str] | None = None, ood_site: str = "",
                 export_personalised: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_sites = list(train_sites or [])
        self.ood_site = ood_site
        self.export_personalised = export_personalised
        self._global_model: FLModel | None = None
        if ood_site and ood_site in self.train_sites:
            raise ValueError(f"ood_site {ood_site!r} must not be one of train_sites {self.train_sites}")

    def sample_clients(self, num_clients: int = None) -> list[str]:
        return list(self.train_sites) if self.train_sites else super().sample_clients(num_clients)

    def update_model(self, model, aggr_result):
        """FedAvg's update, remembering the result: the trained global model for the outside phase."""
        self._global_model = super().update_model(model, aggr_result)
        return self._global_model

    def final_global_model(self) -> FLModel:
        """The global model after the last round (before any round: the persistor's initial model).

        Not ``load_model()`` alone: ``PTFileModelPersistor.load_model`` rebuilds from its initial module and ignores
        what ``save_model`` stored, so after training it returns the untrained weights.
        """
        return self._global_model if self._global_model is not None else self.load_model()

    def run(self) -> None:
        super().run()
        if self.ood_site:
            self._route_on_held_out_site()

    def _route_on_held_out_site(self) -> None:
        if not self.export_personalised:
            self.warning(f"ood_site {self.ood_site!r} set but export_personalised is off: no test-time routing")
            return
        sources = self.sample_clients()
        self.warning(f"requesting opt-in export of personalised models from {sources} for {self.ood_site!r}")
        replies = self.send_model_and_wait(
            task_name=self.task_name, targets=sources, data=FLModel(params={}, meta={PHASE_KEY: EXPORT_PHASE})
        )
        replies = sorted(replies, key=lambda r: (r.meta or {}).get(SITE_KEY, ""))
        experts = [r.params for r in replies if r.params]
        used = [(r.meta or {}).get(SITE_KEY) for r in replies if r.params]
        refused = [(r.meta or {}).get(SITE_KEY) for r in replies if not r.params]
        if refused:
            self.warning(f"sites {refused} did not export their personalised model (their opt-in is off)")
        if not experts:
            self.warning("no personalised model exported: no test-time routing")
            return
        global_model = self.final_global_model()
        self.warning(f"relaying {len(experts)} personalised models + the global model to {self.ood_site!r}")
        replies = self.send_model_and_wait(
            task_name=self.task_name, targets=[self.ood_site],
            data=FLModel(params=pack_experts(experts, global_model.params), meta={PHASE_KEY: ROUTE_PHASE}),
        )
        metrics = replies[0].metrics if replies else {}
        self.info(f"outside scores on {self.ood_site!r}: {metrics}")
        out = {"ood_site": self.ood_site, "experts_from": used,
               "sources": sources, "refused": refused, "metrics": metrics}
        (self._run_dir() / "iopfl_outside.json").write_text(json.dumps(out, indent=2, default=float))

    def _run_dir(self) -> Path:
        try:
            return Path(self.engine.get_workspace().get_run_dir(self.fl_ctx.get_job_id()))
        except Exception:  # older engines: the server's working directory is its run folder
            return Path.cwd()


class IOPFLRecipe(FedAvgRecipe):
    """``FedAvgRecipe`` whose controller is :class:`IOPFLFedAvg` (same arguments, plus the three above)."""

    def __init__(self, *, train_sites: list[str] | None = None, ood_site: str = "",
                 export_personalised: bool = False, **kwargs):
        if ood_site and train_sites and ood_site in train_sites:
            raise ValueError(f"ood_site {ood_site!r} must not be one of train_sites {train_sites}")
        self._iopfl_args = {"train_sites": list(train_sites or []), "ood_site": ood_site,
                            "export_personalised": export_personalised}
        super().__init__(**kwargs)

    def _create_controller(self, persistor_id: str, model_params, model_aggregator) -> IOPFLFedAvg:
        return IOPFLFedAvg(
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
            **self._iopfl_args,
        )
