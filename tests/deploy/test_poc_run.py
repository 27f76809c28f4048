"""End to end: a provisioned 2-site POC runs the prostate FedAvg job exported by our job script.

One deployment serves every test here (module fixture): the server, site-1 and site-2 from one provisioning, plus
an impostor ``site-3`` whose startup kit comes from a second provisioning (another root CA) of the same project and
ports. The job is built with a data root and datalist folder that do not exist: the sites only find their data
through ``FL_DATA_ROOT`` / ``FL_DATALIST`` in their own environment, as a hospital would set them.
Takes about 2-3 minutes on 2 cores (marked slow and poc): ``pytest -m poc``.
"""

from __future__ import annotations

import json
import time

import psutil
import pytest

from deploy.poc import PocDeployment, port_in_use

pytestmark = [pytest.mark.slow, pytest.mark.poc, pytest.mark.timeout(900)]
SITES = ["site-1", "site-2"]


@pytest.fixture(scope="module")
def poc_run(tiny_prostate, tmp_path_factory):
    from jobs.prostate_fedavg import build_recipe, parse_args

    data_root, datalists = tiny_prostate
    base = tmp_path_factory.mktemp("poc")
    args = parse_args([
        "--env", "poc", "--sites", *SITES, "--num-rounds", "1", "--local-epochs", "1", "--threads", "1",
        "--data-root", str(base / "no-such-root"), "--datalist-dir", str(base / "no-such-datalists"),
        "--workspace", str(base), "--name", "prostate_poc_test",
    ])
    recipe = build_recipe(args)
    recipe.export(str(base / "jobs"))
    site_env = {s: {"FL_DATA_ROOT": str(data_root), "FL_DATALIST": str(datalists / f"{s}.json")} for s in SITES}
    poc = PocDeployment(base / "ws", SITES, site_env=site_env)
    impostor = PocDeployment(base / "impostor", ["site-3"], verbose=False)
    out = {"base": base}
    start = time.monotonic()
    with poc:
        poc.provision()
        impostor.fed_learn_port, impostor.admin_port = poc.fed_learn_port, poc.admin_port
        impostor.provision()
        poc.start()
        poc.start_participant("site-3", kit=impostor.kit("site-3"))
        out["connected"] = poc.wait_for_sites(timeout=180)
        job_id = poc.submit(base / "jobs" / recipe.name)
        out["meta"] = poc.follow(job_id, timeout=600)
        out["result"] = poc.download(job_id, base / "results")
        out["connected_at_end"] = poc.connected_sites()
        out["impostor_log"] = (impostor.kit("site-3") / "log.txt").read_text(errors="replace")
        out["ports"] = (poc.fed_learn_port, poc.admin_port)
    out["seconds"] = time.monotonic() - start
    print(f"POC run with {len(SITES)} sites, 1 round: {out['seconds']:.0f} s including start and stop")
    return out


def test_job_completes(poc_run):
    assert poc_run["meta"]["status"] == "FINISHED:COMPLETED"
    assert set(SITES) <= set(poc_run["connected"])


def test_client_without_valid_startup_kit_is_refused(poc_run):
    assert "site-3" not in poc_run["connected"] and "site-3" not in poc_run["connected_at_end"]
    log = poc_run["impostor_log"].lower()
    assert any(k in log for k in ("certificate", "ssl", "handshake")), poc_run["impostor_log"][-2000:]


def test_result_holds_global_model_site_metrics_and_cross_site_matrix(poc_run):
    from src.reporting.summary import find_server_dir, load_cross_site, load_round_metrics

    server = find_server_dir(poc_run["result"])
    assert (server / "app_server" / "FL_global_model.pt").stat().st_size > 10_000
    rounds = load_round_metrics(server)
    assert sorted(rounds) == SITES
    for site in SITES:
        assert len(rounds[site]["val_dice"]) == 1 and 0.0 <= rounds[site]["val_dice"][0] <= 1.0
    cross = load_cross_site(server)
    assert sorted(cross) == SITES
    for site in SITES:  # every site scored both local models and the global models on its own test data
        assert {"site-1", "site-2", "SRV_FL_global_model.pt"} <= set(cross[site])
        assert "test_dice" in cross[site]["SRV_FL_global_model.pt"]
    assert (server / "mlflow.db").exists() and any((server / "tb_events").rglob("events.out.tfevents*"))
    assert json.loads((server / "meta.json").read_text())["name"] == "prostate_poc_test"


def test_nothing_left_running(poc_run):
    marker = str(poc_run["base"])
    leftovers = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if marker in cmd:
            leftovers.append((p.pid, cmd[:120]))
    assert not leftovers
    assert not any(port_in_use(p) for p in poc_run["ports"])
