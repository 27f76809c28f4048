"""The dead-site watchdog's decisions without a federation (quick part of the POC dead-site test,
tests/deploy/test_poc_faults.py, slow): NVFlare's disconnect report (the POC / production branch) marks a missing
site dead, the round's tasks are cancelled only once every missing site is dead, and a round with fewer live sites
than min_clients stops the run naming the dead site."""

from __future__ import annotations

import contextlib
import threading

import pytest

from src.aggregators.controller import STOP_MARKER, FederatedFedAvg


class _Engine:
    def new_context(self):
        return contextlib.nullcontext(None)


def _controller(disconnected: set[str], targets=("site-1", "site-2", "site-3"), min_clients=0):
    c = object.__new__(FederatedFedAvg)  # no NVFlare engine: only the watchdog's state
    c._lock = threading.Lock()
    c._dead, c._workers_seen, c._watchdog = {}, {}, object()
    c._round_targets, c._responded, c._round_tasks = list(targets), set(), ["task-a", "task-b"]
    c.watch_sim_workers, c.min_clients, c.current_round = False, min_clients, 1
    c.engine = _Engine()
    c.logged, c.cancelled = [], []
    c.get_client_disconnect_time = lambda site: 123.0 if site in disconnected else None
    c.error = lambda msg: c.logged.append(("error", msg))
    c.warning = lambda msg: c.logged.append(("warning", msg))
    c.cancel_task = lambda task, fl_ctx=None: c.cancelled.append(task)
    return c


def test_a_disconnected_site_is_dead_but_the_round_waits_for_a_live_missing_one():
    c = _controller({"site-2"})
    c._responded = {"site-1"}
    c._check_sites()
    assert c._dead == {"site-2": "dead during round 1 (NVFlare reports the site disconnected)"}
    assert ("error", "site site-2 is dead during round 1: NVFlare reports the site disconnected") in c.logged
    assert c.cancelled == []  # site-3 is missing but alive: keep waiting


def test_the_round_ends_once_every_missing_site_is_dead():
    c = _controller({"site-2", "site-3"})
    c._responded = {"site-1"}
    c._check_sites()
    assert sorted(c._dead) == ["site-2", "site-3"] and c.cancelled == ["task-a", "task-b"]
    assert any(kind == "warning" and "ending the round without ['site-2', 'site-3']" in msg for kind, msg in c.logged)
    c._check_sites()  # tasks already cancelled: nothing twice
    assert c.cancelled == ["task-a", "task-b"]


def test_a_site_that_answered_is_never_dead():
    c = _controller({"site-1"})
    c._responded = {"site-1", "site-2", "site-3"}
    c._check_sites()
    assert c._dead == {} and c.cancelled == []


@pytest.mark.parametrize("min_clients, stops", [(2, False), (3, True), (0, True)])
def test_the_next_round_runs_without_the_dead_site_only_if_min_clients_allow(min_clients, stops):
    c = _controller(set(), min_clients=min_clients)
    c._dead = {"site-2": "dead during round 1 (NVFlare reports the site disconnected)"}
    c.current_round = 2
    if stops:
        with pytest.raises(RuntimeError, match=r"round 2: 2 live sites, 3 needed \(min_clients\); site-2: dead"):
            c._start_round(["site-1", "site-2", "site-3"])
        assert any(STOP_MARKER in msg and "site-2" in msg for _, msg in c.logged)
    else:
        assert c._start_round(["site-1", "site-2", "site-3"]) == ["site-1", "site-3"]
        assert ("warning", "round 2: no task for site-2: dead during round 1 (NVFlare reports the site "
                           "disconnected)") in c.logged


@pytest.mark.parametrize("min_clients, expected", [("1", 1), ("0", 2)])
def test_the_deployment_policy_lets_a_job_run_on_with_min_clients_sites(tmp_path, min_clients, expected):
    """NVFlare aborts a POC / production job once fewer sites are alive than meta.json's min_clients: it must be
    --min-clients (every site when 0), or the controller never gets to carry on without a dead site. Sites wait
    up to RUNNER_SYNC_TIMEOUT_S for the server's job process (NVFlare's 60 s fails jobs on a loaded machine)."""
    import json

    from jobs.common import RUNNER_SYNC_TIMEOUT_S
    from jobs.prostate_fedavg import build_recipe, parse_args

    args = parse_args(["--env", "export", "--sites", "site-1", "site-2", "--min-clients", min_clients,
                       "--workspace", str(tmp_path / "ws"), "--tracking", "none"])
    recipe = build_recipe(args)
    recipe.export(str(tmp_path / "out"))
    job = tmp_path / "out" / recipe.name
    assert json.loads((job / "meta.json").read_text())["min_clients"] == expected
    client = json.loads(next(job.rglob("config_fed_client.json")).read_text())
    assert client["max_runner_sync_timeout"] == RUNNER_SYNC_TIMEOUT_S
