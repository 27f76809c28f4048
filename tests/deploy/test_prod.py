"""--env prod without a deployment: the admin kit is checked before any login (the run itself: test_netns.py)."""

from __future__ import annotations

import json

import pytest

from jobs.prod import admin_username, submit_to_prod


def _args(tmp_path, *extra):
    from jobs.prostate_fedavg import parse_args

    return parse_args(["--env", "prod", "--workspace", str(tmp_path), *extra])


def test_prod_needs_a_startup_kit(tmp_path):
    with pytest.raises(ValueError, match="--startup-kit"):
        submit_to_prod(None, _args(tmp_path))


def test_prod_refuses_a_folder_that_is_not_an_admin_kit(tmp_path):
    (tmp_path / "site-1" / "startup").mkdir(parents=True)
    (tmp_path / "site-1" / "startup" / "fed_client.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="fed_admin.json"):
        submit_to_prod(None, _args(tmp_path, "--startup-kit", str(tmp_path / "site-1")))


def test_admin_username_comes_from_the_provisioned_kit(tmp_path):
    from deploy.poc import PocDeployment

    poc = PocDeployment(tmp_path / "poc", ["site-1"], verbose=False)
    poc.provision()
    assert admin_username(poc.kit(poc.admin_name)) == poc.admin_name == "admin@fl-medimg.org"
    bad = tmp_path / "bad" / "startup"
    bad.mkdir(parents=True)
    (bad / "fed_admin.json").write_text(json.dumps({"admin": {"host": "x"}}))
    with pytest.raises(ValueError, match="no admin username"):
        admin_username(bad.parent)
