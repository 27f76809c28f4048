"""``--env poc``: run a job script's recipe on a freshly provisioned federation on this machine.

The recipe is exported exactly as ``--env export`` does, then :func:`deploy.poc.run_job` provisions
``deploy/project.yml`` for the job's sites, starts the server and the clients, waits until every site has connected,
submits the exported job through the FLARE API, follows it, downloads the result and stops every process again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from data_prep.common import own_folder
from deploy.poc import parse_site_env, run_job
from jobs.common import sites_of

__all__ = ["submit_to_poc"]


def submit_to_poc(recipe, args) -> Path:
    """Export ``recipe``, run it on a POC with the sites of ``args`` and return the downloaded result folder.

    The POC lives in ``<workspace>/poc`` (re-provisioned on every call); results go to
    ``<workspace>/poc-results/<job id>``, which :func:`src.reporting.summary.report` reads.
    """
    workspace = Path(args.workspace).resolve()
    site_env = parse_site_env(getattr(args, "site_env", None) or [])
    own_folder(workspace / "poc-results", "jobs poc results")
    staging = Path(tempfile.mkdtemp(prefix="fl-poc-job-"))
    try:
        recipe.export(str(staging))
        job_dir = staging / recipe.name
        if not (job_dir / "meta.json").exists():
            raise FileNotFoundError(f"recipe export did not write {str(job_dir / 'meta.json')!r}")
        return run_job(
            job_dir,
            sites_of(args),
            workspace / "poc",
            workspace / "poc-results",
            site_env=site_env,
            job_timeout=getattr(args, "poc_timeout", 3600.0),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
