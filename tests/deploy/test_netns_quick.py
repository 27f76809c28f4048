"""The default-suite part of the separate-hosts test (about 30 s): a server and one site in their own network
namespaces connect over the namespace address, an impostor kit is refused across the network, nothing of ours listens
in the host's namespace, and everything is gone afterwards. The full scenario (job with --env prod, cut link,
killed client): tests/deploy/test_netns.py (slow)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from deploy.netns import NetnsTopology, netns_unavailable_reason
from deploy.poc import PocDeployment

REASON = netns_unavailable_reason()
pytestmark = [pytest.mark.netns, pytest.mark.timeout(300),
              pytest.mark.skipif(REASON is not None, reason=f"netns: {REASON}")]
PORTS = (28102, 28103)


def test_site_connects_across_namespaces_and_impostor_is_refused(tmp_path):
    from tests.deploy.test_netns import ADMIN, ROOT, Monitor

    topo = NetnsTopology("server", ["site-1", "admin", "impostor"], tag=f"q{time.time_ns() % 10000}")
    host = topo.server_address
    poc = PocDeployment(tmp_path / "ws", ["site-1"], host=host, fed_learn_port=PORTS[0], admin_port=PORTS[1],
                        launch_prefix={host: topo.prefix("server"), "site-1": topo.prefix("site-1"),
                                       "site-3": topo.prefix("impostor")}, verbose=False)
    impostor = PocDeployment(tmp_path / "impostor", ["site-3"], host=host, fed_learn_port=PORTS[0],
                             admin_port=PORTS[1], verbose=False)
    monitor = Monitor(tmp_path / "monitor.jsonl")
    try:
        topo.create()
        poc.provision()
        impostor.provision()
        poc.processes["monitor"] = subprocess.Popen(
            [*topo.prefix("admin"), sys.executable, "-m", "deploy.netns", "monitor", "--kit", str(poc.kit(ADMIN)),
             "--out", str(monitor.path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        poc.start_participant(host)
        poc.start_participant("site-1")
        poc.start_participant("site-3", kit=impostor.kit("site-3"))
        monitor.wait(lambda c: "site-1" in c, 180, "site-1 registered")
        listening_server, listening_host = topo.listening_ports("server"), topo.listening_ports(None)
        deadline = time.monotonic() + 90  # until the impostor has tried (and failed) its TLS handshake
        while not _tls_refused(impostor_log := _read(impostor.kit("site-3") / "log.txt")) and \
                time.monotonic() < deadline:
            time.sleep(1)
        seen = {c for s in monitor.samples() for c in s.get("clients", [])}
    finally:
        poc.stop()
        topo.delete()
    assert seen == {"site-1"}
    assert _tls_refused(impostor_log), impostor_log[-2000:]
    assert set(PORTS) <= listening_server and not set(PORTS) & listening_host
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in namespaces for ns in topo.names.values())
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or ())]


def _read(path) -> str:
    return path.read_text(errors="replace").lower() if path.exists() else ""


def _tls_refused(log: str) -> bool:
    return any(k in log for k in ("certificate", "ssl", "handshake"))
