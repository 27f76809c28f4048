"""The shipped project.yml and its rendering for a POC (no processes started)."""

from __future__ import annotations

import json

import pytest
import yaml

from deploy.poc import PROJECT_FILE, PocDeployment, parse_site_env, render_project


@pytest.fixture()
def template():
    return yaml.safe_load(PROJECT_FILE.read_text())


def test_shipped_project_uses_tcp_and_has_server_sites_admin(template):
    builders = {b["path"].rsplit(".", 1)[-1]: b.get("args", {}) for b in template["builders"]}
    assert builders["StaticFileBuilder"]["scheme"] == "tcp"
    kinds = [p["type"] for p in template["participants"]]
    assert kinds.count("server") == 1 and kinds.count("client") >= 2
    assert any(p.get("role") == "project_admin" for p in template["participants"])


def test_render_keeps_only_requested_sites_and_sets_host_and_ports(template):
    project = render_project(template, ["site-2", "site-9"], "localhost", 9100, 9101)
    server = project["participants"][0]
    assert (server["name"], server["fed_learn_port"], server["admin_port"]) == ("localhost", 9100, 9101)
    clients = [p for p in project["participants"] if p["type"] == "client"]
    assert [c["name"] for c in clients] == ["site-2", "site-9"]
    assert clients[0]["org"] == "hospital_2"  # from the template
    assert clients[1]["org"] == "org_site_9"  # a new site gets its own organisation
    assert project["builders"] == template["builders"]


def test_render_rejects_broken_projects(template):
    with pytest.raises(ValueError, match="at least one client"):
        render_project(template, [], "localhost", 1, 2)
    no_server = {**template, "participants": [p for p in template["participants"] if p["type"] != "server"]}
    with pytest.raises(ValueError, match="exactly one server"):
        render_project(no_server, ["site-1"], "localhost", 1, 2)
    no_admin = {**template, "participants": [p for p in template["participants"] if p["type"] != "admin"]}
    with pytest.raises(ValueError, match="project_admin"):
        render_project(no_admin, ["site-1"], "localhost", 1, 2)


def test_parse_site_env():
    assert parse_site_env(["site-1:FL_DATA_ROOT=/a", "site-1:FL_DATALIST=/b/c.json", "site-2:X=1=2"]) == {
        "site-1": {"FL_DATA_ROOT": "/a", "FL_DATALIST": "/b/c.json"},
        "site-2": {"X": "1=2"},
    }
    with pytest.raises(ValueError, match="SITE:VAR=VALUE, got 'site-1=3'"):
        parse_site_env(["site-1=3"])


def test_site_env_must_name_deployed_sites(tmp_path):
    with pytest.raises(ValueError, match="site-7"):
        PocDeployment(tmp_path, ["site-1"], site_env={"site-7": {"FL_DATA_ROOT": "/x"}})


def test_provision_writes_startup_kits(tmp_path):
    poc = PocDeployment(tmp_path / "poc", ["site-1", "site-2"], verbose=False)
    prod = poc.provision()
    for name in ("localhost", "site-1", "site-2", poc.admin_name):
        assert (prod / name / "startup" / "rootCA.pem").exists(), name
    client = json.loads((prod / "site-1" / "startup" / "fed_client.json").read_text())
    assert client["servers"][0]["service"] == {"target": f"localhost:{poc.fed_learn_port}", "scheme": "tcp"}
    assert client["client"]["fqsn"] == "site-1"
    admin = json.loads((prod / poc.admin_name / "startup" / "fed_admin.json").read_text())["admin"]
    assert (admin["port"], admin["scheme"]) == (poc.admin_port, "tcp")
    assert not (prod / "site-3").exists()


def test_production_profile_provisions_three_hospitals_with_mutual_tls(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    prod_file = PROJECT_FILE.with_name("project.prod.yml")
    project = yaml.safe_load(prod_file.read_text())
    [server] = [p for p in project["participants"] if p["type"] == "server"]
    assert "." in server["name"] and server["name"] != "localhost"  # a host name the sites dial
    cli = Path(sys.executable).with_name("nvflare")
    subprocess.run([str(cli), "provision", "-p", str(prod_file), "-w", str(tmp_path)], check=True,
                   capture_output=True, timeout=300, cwd=tmp_path)
    prod = tmp_path / project["name"] / "prod_00"
    fed_server = json.loads((prod / server["name"] / "startup" / "fed_server.json").read_text())["servers"][0]
    assert fed_server["connection_security"] == "mtls"
    assert fed_server["service"] == {"target": f"{server['name']}:8002", "scheme": "tcp"}
    sites = [p["name"] for p in project["participants"] if p["type"] == "client"]
    assert len(sites) == 3
    for site in sites:
        startup = prod / site / "startup"
        client = json.loads((startup / "fed_client.json").read_text())
        assert client["servers"][0]["service"]["target"] == f"{server['name']}:8002"
        assert {"client.crt", "client.key", "rootCA.pem"} <= {p.name for p in startup.iterdir()}
    admin = json.loads((prod / "admin@fl-medimg.org" / "startup" / "fed_admin.json").read_text())["admin"]
    assert (admin["host"], admin["port"], admin["connection_security"]) == (server["name"], 8003, "mtls")
