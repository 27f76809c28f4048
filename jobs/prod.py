"""``--env prod``: submit a job script's recipe to an already running provisioned deployment.

NVFlare's ``ProdEnv`` logs in with the admin's startup kit (mutual TLS, the kit's own certificate), submits the
exported job; :func:`submit_to_prod` then follows it to the end and moves the downloaded result next to the POC
results. Nothing is started or stopped here: the server and the sites are the hospitals' own processes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["admin_username", "submit_to_prod"]

COMPLETED = "FINISHED:COMPLETED"


def admin_username(kit: str | Path) -> str:
    """The user name an admin kit was provisioned for (``startup/fed_admin.json``), checked before any login."""
    config = Path(kit) / "startup" / "fed_admin.json"
    if not config.is_file():
        raise FileNotFoundError(f"--startup-kit must be an admin startup kit (the folder holding startup/), "
                                f"but {str(config)!r} does not exist")
    admin = json.loads(config.read_text()).get("admin", {})
    if not admin.get("username"):
        raise ValueError(f"{str(config)!r} names no admin username: {admin!r}")
    return admin["username"]


def submit_to_prod(recipe, args) -> Path:
    """Submit ``recipe`` with the admin kit ``args.startup_kit``, wait for the job, return its result folder.

    The result lands in ``<workspace>/prod-results/<job id>`` (what :func:`src.reporting.summary.report` reads).
    ``args.prod_timeout`` > 0 bounds the wait; the job itself keeps running on the deployment when it expires
    (the error says how to fetch it later), because an admin's laptop going away must not abort a hospitals' job.
    """
    from nvflare.recipe import ProdEnv

    if not getattr(args, "startup_kit", None):
        raise ValueError("--env prod needs --startup-kit <admin startup kit folder>")
    kit = Path(args.startup_kit).resolve()
    env = ProdEnv(startup_kit_location=str(kit), username=admin_username(kit),
                  login_timeout=float(getattr(args, "login_timeout", 30.0)))
    run = recipe.execute(env)
    job_id = run.get_job_id()
    timeout = float(getattr(args, "prod_timeout", 0.0))
    downloaded = run.get_result(timeout=timeout, clean_up=False)
    status = run.get_status()
    if downloaded is None:
        raise TimeoutError(f"job {job_id} did not finish within {timeout:.0f} s (status {status!r}); it keeps "
                           f"running on the deployment: fetch it later with the same kit, "
                           f"new_secure_session(...).download_job_result({job_id!r})")
    target = Path(args.workspace).resolve() / "prod-results" / job_id
    if target.exists():
        shutil.rmtree(target)
    from data_prep.common import own_folder

    own_folder(target.parent, "jobs prod results")
    shutil.move(str(downloaded), str(target))
    print(f"job {job_id} ended {status}; result in {target}")
    if status != COMPLETED:
        raise RuntimeError(f"job {job_id} ended {status!r}, expected {COMPLETED!r}; logs and partial result in "
                           f"{target}")
    return target
