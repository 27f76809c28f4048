"""The server workflow every job uses: NVFlare's FedAvg with extras beside the model, and one recipe for it.

:class:`FederatedFedAvg` is NVFlare's ``FedAvg`` controller with three additions a server rule builds on:

* extras: :meth:`~FederatedFedAvg.round_extras` (one broadcast for all sites) and
  :meth:`~FederatedFedAvg.site_extras` (per site, sent in that site's own task so no other site sees it) ride
  beside the model in the round's task (:func:`src.protocol.pack_payload`); the learner receives them in
  ``begin_round``. The global model itself never holds them;
* the aggregator learns the global model's keys and shapes each round, so it can check every update;
* the trained global model of the last round is kept (:meth:`~FederatedFedAvg.final_global_model`);
  ``PTFileModelPersistor.load_model`` rebuilds the initial model in NVFlare 2.9;
* dead or slow sites (``min_clients``, ``round_timeout``): a round waits for every target site up to
  ``round_timeout`` seconds, and a watchdog thread ends the wait early once every site still missing is known dead
  (NVFlare reports it disconnected, or, with ``watch_sim_workers``, its simulator worker process is gone). The
  round is then aggregated from the sites that answered if at least ``min_clients`` did; otherwise the run stops
  with a message naming the missing sites and why. A dead site gets no further tasks;
* a round's end is noticed within :data:`TASK_CHECK_PERIOD` seconds: NVFlare's FedAvg polls for finished tasks
  every 0.5 s and its communicator every 0.2 s (``Controller.set_communicator`` sets ``task_check_period`` on
  the communicator, an attribute ``WFCommServer`` never reads: it sleeps on ``_task_check_period``), which cost
  about 0.6 s of idle server time per round (measured in ``benchmarks/fedavg_overhead.py``).

:class:`ControllerRecipe` is ``FedAvgRecipe`` with a ``controller_class`` argument, so an algorithm's server is a
subclass of :class:`FederatedFedAvg` (IOP-FL's outside phase, FedMRI's encoder snapshots), never a copied recipe,
and a checked :class:`~src.aggregators.fedavg.FedAvgAggregator` by default.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.app_opt.pt.recipes import FedAvgRecipe

from src.aggregators.fedavg import FedAvgAggregator
from src.protocol import PHASE_KEY, pack_payload
from src.reporting.console import RoundClock

__all__ = ["FederatedFedAvg", "ControllerRecipe", "STOP_MARKER"]

#: prefix of the log line that says why the server stopped a run (the job script shows it to the user)
STOP_MARKER = "FL-RUN-STOPPED:"
SIM_WORKER_MODULE = "nvflare.private.fed.app.simulator.simulator_worker"
#: seconds between the server's checks for finished tasks (NVFlare: 0.5 in FedAvg, 0.2 in its communicator); a
#: check is a few lookups under a lock, and the next round's task is then ready before a site's first fetch
#: (``task_request_interval`` 0.1 s after its result; see src/learners/polling.py for the site side)
TASK_CHECK_PERIOD = 0.02


class FederatedFedAvg(FedAvg):
    """FedAvg with extras, checked updates and the final global model (see the module docstring).

    Args:
        train_sites: sites that train (all connected sites when empty), e.g. to keep a held-out site out.
        min_clients: fewest sites whose result a round needs (0: every target site).
        round_timeout: seconds a round waits for the sites' results (0: no limit).
        watch_sim_workers: also treat a site as dead when its simulator worker process (a child of this process)
            has exited; only for the simulator with one thread per site (the jobs' ``--env sim``).
    """

    def __init__(self, *args, train_sites: list[str] | None = None, min_clients: int = 0, round_timeout: int = 0,
                 watch_sim_workers: bool = False, **kwargs):
        kwargs.setdefault("task_check_period", TASK_CHECK_PERIOD)
        super().__init__(*args, **kwargs)
        if not isinstance(min_clients, int) or min_clients < 0:
            raise ValueError(f"min_clients must be an int >= 0, got {min_clients!r}")
        if not isinstance(round_timeout, int) or round_timeout < 0:
            raise ValueError(f"round_timeout must be an int >= 0 (seconds), got {round_timeout!r}")
        self.train_sites = list(train_sites or [])
        self.min_clients, self.round_timeout, self.watch_sim_workers = min_clients, round_timeout, watch_sim_workers
        self._global_model: FLModel | None = None
        self._clock = RoundClock()
        self._lock = threading.Lock()
        self._round_tasks: list = []
        self._round_targets: list[str] = []
        self._responded: set[str] = set()
        self._dead: dict[str, str] = {}  # site -> why it is considered dead
        self._workers_seen: dict[str, float] = {}  # site -> last time its simulator worker was seen alive
        self._watchdog: threading.Thread | None = None

    def set_communicator(self, communicator) -> None:
        super().set_communicator(communicator)
        if hasattr(communicator, "_task_check_period"):  # see the module docstring (NVFlare 2.9's WFCommServer)
            communicator._task_check_period = self._task_check_period

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
        targets = self._start_round(targets)
        timeout = timeout or self.round_timeout
        callback = self._recording(callback)
        broadcast = self.round_extras(data)
        per_site = {site: self.site_extras(site, data) for site in targets}
        if not any(per_site.values()):
            return super().send_model(task_name, _with_extras(data, broadcast), targets, min_responses, timeout,
                                      callback)
        for site in targets:
            super().send_model(task_name, _with_extras(data, {**broadcast, **per_site[site]}), [site], None, timeout,
                               callback)

    # ---- dead and slow sites -----------------------------------------------------------------------------
    def _start_round(self, targets: list[str]) -> list[str]:
        """This round's targets without the sites already known dead; stop the run if too few remain."""
        alive = [t for t in targets if t not in self._dead]
        for site in sorted(set(targets) - set(alive)):
            self.warning(f"round {self.current_round}: no task for {site}: {self._dead[site]}")
        needed = self.min_clients or len(targets)
        if len(alive) < needed:
            self._stop_run(f"round {self.current_round}: {len(alive)} live sites, {needed} needed (min_clients); "
                           + self._dead_text(sorted(set(targets) - set(alive))))
        with self._lock:
            self._round_tasks, self._round_targets, self._responded = [], list(alive), set()
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="site-watchdog", daemon=True)
            self._watchdog.start()
        return alive

    def _prepare_task(self, *args, **kwargs):
        task = super()._prepare_task(*args, **kwargs)
        with self._lock:
            self._round_tasks.append(task)
        return task

    def _recording(self, callback):
        def record(result: FLModel):
            with self._lock:
                self._responded.add((result.meta or {}).get("client_name", "unknown site"))
            return callback(result) if callback is not None else None

        return record

    def _dead_text(self, sites) -> str:
        return "; ".join(f"{s}: {self._dead.get(s, 'sent no result in time')}" for s in sites)

    def _stop_run(self, message: str):
        self.error(f"{STOP_MARKER} {message}")
        raise RuntimeError(message)

    def _watch(self) -> None:
        """Every 0.5 s: mark missing sites dead; cancel the round's tasks once every missing site is dead."""
        while not (getattr(self, "abort_signal", None) is not None and self.abort_signal.triggered):
            time.sleep(0.5)
            try:
                self._check_sites()
            except Exception as e:  # the watchdog must never take the server down
                self.warning(f"site watchdog: {type(e).__name__}: {e}")

    def _check_sites(self) -> None:
        alive_workers = self._sim_workers() if self.watch_sim_workers else None
        now = time.monotonic()
        with self._lock:
            pending = [s for s in self._round_targets if s not in self._responded]
            tasks = list(self._round_tasks)
        if alive_workers is not None:
            for site in alive_workers:
                self._workers_seen[site] = now
        for site in pending:
            if site in self._dead:
                continue
            reason = None
            if self.get_client_disconnect_time(site) is not None:
                reason = "NVFlare reports the site disconnected"
            elif alive_workers is not None and site in self._workers_seen and site not in alive_workers \
                    and now - self._workers_seen[site] > 2.0:
                reason = "its simulator worker process exited"
            if reason:
                self._dead[site] = f"dead during round {self.current_round} ({reason})"
                self.error(f"site {site} is dead during round {self.current_round}: {reason}")
        if pending and tasks and all(s in self._dead for s in pending):
            self.warning(f"round {self.current_round}: ending the round without {pending}")
            with self.engine.new_context() as ctx:
                for task in tasks:
                    self.cancel_task(task, fl_ctx=ctx)
            with self._lock:
                self._round_tasks = []

    @staticmethod
    def _sim_workers() -> set[str]:
        """Sites whose simulator worker is a live child of this process."""
        import psutil

        sites = set()
        for child in psutil.Process(os.getpid()).children():
            try:
                cmd = child.cmdline()
                if child.status() != psutil.STATUS_ZOMBIE and SIM_WORKER_MODULE in cmd and "--client" in cmd:
                    sites.add(cmd[cmd.index("--client") + 1])
            except (psutil.Error, IndexError):
                continue
        return sites

    def _get_aggregated_result(self) -> FLModel:
        with self._lock:
            missing = [s for s in self._round_targets if s not in self._responded]
            answered = len(self._round_targets) - len(missing)
        if missing:
            self.warning(f"round {self.current_round}: no result from {self._dead_text(missing)}")
        needed = self.min_clients or len(self._round_targets)
        if self._round_targets and answered < needed:
            self._stop_run(f"round {self.current_round}: {answered} of {len(self._round_targets)} sites sent a "
                           f"result, {needed} needed (min_clients); missing: {self._dead_text(missing)}")
        result = super()._get_aggregated_result()
        if missing:
            result.meta = {**(result.meta or {}), "missing_sites": {s: self._dead.get(s, "no result in time")
                                                                     for s in missing}}
        return result

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
    ``site_policy`` holds the dead/slow-site options every job sets (``min_clients``, ``round_timeout``,
    ``watch_sim_workers``), kept apart so an algorithm's recipe can fill ``controller_args`` itself.
    """

    def __init__(self, *, controller_class: type[FederatedFedAvg] = FederatedFedAvg,
                 controller_args: Mapping | None = None, site_policy: Mapping | None = None, **kwargs):
        if not (isinstance(controller_class, type) and issubclass(controller_class, FederatedFedAvg)):
            raise TypeError(f"controller_class must be a FederatedFedAvg subclass, got {controller_class!r}")
        self.controller_class = controller_class
        self.controller_args = {**dict(site_policy or {}), **dict(controller_args or {})}
        kwargs.setdefault("aggregator", FedAvgAggregator())
        super().__init__(**kwargs)
        # NVFlare's deployment policy (meta.json ``min_clients``) aborts a POC / production job as soon as fewer
        # sites are alive than it says; the recipe puts every site there, so a dead site would abort the job before
        # the controller could carry on without it. With min_clients K the job may run on with K live sites.
        policy_min = self.controller_args.get("min_clients") or 0
        job_config = getattr(getattr(self, "_job", None), "job", None)
        if policy_min and job_config is not None and hasattr(job_config, "min_clients"):
            job_config.min_clients = min(job_config.min_clients, policy_min)

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
