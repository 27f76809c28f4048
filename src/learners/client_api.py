"""NVFlare Client API loop shared by every job: it only dispatches tasks to the site's learner.

``train`` -> :meth:`FederatedLearner.fit_round` (the round's order lives in the learner base), ``validate`` ->
``evaluate``, ``submit_model`` -> ``best_local_state``, a controller's extra phase -> ``run_phase``. The job stages
``learner_config.json`` (learner class, config class, config values) next to the entry script in the job's
``custom/`` folder; every site builds its learner from it and its own site name.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import time
import traceback
from pathlib import Path

from src.learners.polling import TaskPacing
from src.protocol import NUM_STEPS_KEY, PHASE_KEY, ROUND_ERROR_KEY, SITE_KEY, unpack_payload
from src.reporting.console import progress, site_line

STAGED_CONFIG = "learner_config.json"

log = logging.getLogger(__name__)


def import_object(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_learner(site: str, staged: dict, output_dir: Path):
    config = import_object(staged["config_class"]).from_dict(staged["config"])
    return import_object(staged["learner"])(site, config, output_dir=output_dir)


class MetricLogger:
    """Sends a site's metrics to the server's tracking receivers (TensorBoard and/or MLflow).

    One writer feeds every receiver: NVFlare's receivers each accept the other's analytics events, so logging
    through both writers would store every value twice.
    """

    def __init__(self, tracking, config: dict):
        from nvflare.client.tracking import SummaryWriter

        # the configuration is not sent from here: the TensorBoard receiver would turn each value into a text card
        # ahead of the results table; the job's report logs it (and the run's settings) as MLflow parameters
        self.writer = SummaryWriter() if tracking else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.writer:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)


#: environment variable naming the folder of every site's models and persistent state (``<dir>/<site>``); the
#: simulator jobs set it to ``<run folder>/site_state`` so a ``--resume`` run finds the state outside the simulator
#: workspace (which NVFlare's simulator empties when a run starts)
SITE_STATE_ENV = "FL_SITE_STATE_DIR"


def site_state_dir(site: str) -> Path:
    root = os.environ.get(SITE_STATE_ENV)
    return Path(root) / site if root else Path.cwd() / "models"


def result_message(result) -> dict:
    """The parts of a training round's ``FLModel`` (``params``, ``metrics``, ``meta``) a site sends.

    The received global model's validation score (``val_*``) is what the server's model selection compares; the
    local / personalised scores and training figures ride along for the server's round table.
    """
    return {"params": result.params, "metrics": {**result.metrics, **result.received_metrics},
            "meta": {NUM_STEPS_KEY: result.num_steps, **result.meta}}


def run(staged: dict) -> None:
    import nvflare.client as flare
    from nvflare.app_common.abstract.fl_model import FLModel

    from src.learners.base import NonFiniteLossError

    pacing = TaskPacing(flare.init())

    def send(model: FLModel) -> None:
        flare.send(model)
        pacing.result_sent()  # the next task is due: fetch it sooner

    site = flare.get_site_name()
    try:
        learner = build_learner(site, staged, site_state_dir(site))
    except Exception:
        # fail the job with the reason instead of leaving the server waiting for this site
        log.error(f"{site}: cannot start the learner:\n{traceback.format_exc()}")
        raise
    if not learner.config.resume and os.environ.get(SITE_STATE_ENV) and learner.restore():
        # the simulator runs fewer site processes than sites (--sim-workers): this site's earlier process of the
        # same run saved its state at the end of its last round; carry on from it exactly, as --resume does
        progress(f"{site}: carried on from its saved state (round {learner.round})")
    cases = ", ".join(f"{len(v)} {k}" for k, v in learner.datalist.items())
    progress(f"{site}: {type(learner).__name__} on {learner.device}, {cases} cases")
    metrics_log = MetricLogger(learner.config.tracking, staged["config"])
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        params, extras = unpack_payload(received.params, site)
        if flare.is_submit_model():
            send(FLModel(params=learner.best_local_state()))
            continue
        if flare.is_evaluate():
            send(FLModel(metrics=learner.evaluate(params, split=learner.config.eval_split)))
            continue
        phase = (received.meta or {}).get(PHASE_KEY)
        if phase:  # a controller's extra request riding on the train task (e.g. IOP-FL's export / routing)
            params, metrics = learner.run_phase(phase, params, received.meta)
            metrics_log.log({f"{phase}/{k}": v for k, v in metrics.items()}, received.current_round or 0)
            send(FLModel(params=params, metrics=metrics, meta={SITE_KEY: site}))
            continue
        round_number = received.current_round or 0
        started = time.monotonic()
        log.info(f"{site} round {round_number}: training started")
        try:
            result = learner.fit_round(params, round_number, extras)
        except NonFiniteLossError as e:  # nothing trained is sent; the server drops this site for the round
            log.error(str(e))
            send(FLModel(params=learner.shared_state(), meta={NUM_STEPS_KEY: 0, ROUND_ERROR_KEY: str(e)}))
            continue
        inject_fault(learner, site, result)
        metrics_log.log(result.metrics, round_number)
        log.info(f"{site} round {round_number}: {_fmt(result.received_metrics)} (global) {_fmt(result.metrics)}")
        progress(site_line(round_number, received.total_rounds, site, result.metrics, result.received_metrics,
                           learner.key_metric, time.monotonic() - started))
        send(FLModel(**result_message(result)))


#: ``config.extra`` key of the reliability tests' fault injection: ``{"site": ..., "kind": "nan_weights" |
#: "huge_weight"}`` makes that site send a poisoned update (the server must drop it). Never set by a job script.
FAULT_KEY = "fault_injection"


def inject_fault(learner, site: str, result) -> None:
    fault = (learner.config.extra or {}).get(FAULT_KEY) or {}
    if fault.get("site") != site:
        return
    if fault.get("kind") == "nan_weights":
        key = next(k for k, v in result.params.items() if v.is_floating_point())
        result.params[key] = result.params[key].clone().fill_(float("nan"))
    elif fault.get("kind") == "huge_weight":
        result.num_steps = 10**12
    log.warning(f"{site}: fault injection {fault.get('kind')!r} applied to this round's update")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="NVFlare Client API entry point of the bundle's jobs")
    parser.add_argument("--config", default=STAGED_CONFIG, help="staged learner config (relative to this script)")
    args = parser.parse_args(argv)
    path = Path(args.config)
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path if not path.exists() else path
    run(json.loads(path.read_text()))
