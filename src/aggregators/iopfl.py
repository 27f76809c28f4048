"""Server side of the IOP-FL job: FedAvg on the source sites, then opt-in routing on a held-out site.

:class:`IOPFLFedAvg` is :class:`~src.aggregators.controller.FederatedFedAvg` (only ``train_sites`` train; a
held-out ``ood_site`` is connected but never receives the model to train) with one addition: after the last
round, when ``ood_site`` is set **and** ``export_personalised`` is on, it asks every source site for its
personalised model (each site must also have opted in through its own config; refusals are logged and skipped),
relays them with the global model to ``ood_site`` and stores the site's outside scores in ``iopfl_outside.json``
in the server's run folder. Personalised models are more site-revealing than the global model (membership
inference), hence the double opt-in and the warning in the server log.

Both extra requests reuse the ``train`` task with a :data:`~src.protocol.PHASE_KEY` meta entry, so the stock
Client API executor needs no extra task names.
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.app_common.abstract.fl_model import FLModel

from src.aggregators.controller import ControllerRecipe, FederatedFedAvg
from src.protocol import EXPORT_PHASE, PHASE_KEY, ROUTE_PHASE, SITE_KEY, pack_experts

__all__ = ["IOPFLFedAvg", "IOPFLRecipe"]


class IOPFLFedAvg(FederatedFedAvg):
    """FedAvg over ``train_sites`` followed by the optional outside phase (see the module docstring).

    Args:
        train_sites: sites that train (all connected sites when empty).
        ood_site: held-out site for test-time routing ("" for none).
        export_personalised: the server's side of the opt-in to relay personalised models.
    """

    def __init__(self, *args, ood_site: str = "", export_personalised: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.ood_site = ood_site
        self.export_personalised = export_personalised
        if ood_site and ood_site in self.train_sites:
            raise ValueError(f"ood_site {ood_site!r} must not be one of train_sites {self.train_sites}")

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


class IOPFLRecipe(ControllerRecipe):
    """:class:`ControllerRecipe` with :class:`IOPFLFedAvg`; rejects a held-out site that also trains."""

    def __init__(self, *, train_sites: list[str] | None = None, ood_site: str = "",
                 export_personalised: bool = False, **kwargs):
        if ood_site and train_sites and ood_site in train_sites:
            raise ValueError(f"ood_site {ood_site!r} must not be one of train_sites {train_sites}")
        args = {"train_sites": list(train_sites or []), "ood_site": ood_site,
                "export_personalised": export_personalised}
        super().__init__(controller_class=IOPFLFedAvg, controller_args=args, **kwargs)
