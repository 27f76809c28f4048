"""What every job script shares: its command-line options, staging of the project code, and running it.

A job script only composes: parse options -> ``build_recipe(args)`` (importable, no side effects) -> ``execute``.
``build_recipe`` hands :func:`build_job_recipe` a model *factory*: the initial global model is built there under
``torch.manual_seed(args.seed)``, so the same ``--seed`` gives the same start. NVFlare is imported lazily because
importing ``nvflare.recipe`` strips ``--export-dir`` from ``sys.argv``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobs.console import add_console_options, sim_log_config, tracking_config  # noqa: E402
from src.config.base import LearnerConfig  # noqa: E402
from src.learners.client_api import STAGED_CONFIG  # noqa: E402
from src.privacy.filters import add_privacy_filter, add_privacy_options  # noqa: E402

SRC_DIR = ROOT / "src"
# relative to ROOT: NVFlare keeps a relative script path, so the exported job finds it in custom/jobs/
CLIENT_SCRIPT = "jobs/fl_client.py"
# relative to ROOT: NVFlare bundles a relative initial checkpoint into the server app of the job
INITIAL_MODELS = Path("workspace") / "initial_models"
TRACKING_CHOICES = {
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow",),
    "both": ("tensorboard", "mlflow"),
    "none": (),
}


def job_parser(description: str, *, name: str, n_clients: int, num_rounds: int, local_epochs: int,
               data_root: str, datalist_dir: str) -> argparse.ArgumentParser:
    """The options every job takes (``--help`` shows the job's own defaults)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", choices=("sim", "poc", "prod", "export"), default="sim",
                   help="run in the simulator, on a fresh local POC, submit to a running provisioned deployment "
                        "(prod, with --startup-kit), or only export the job folder")
    p.add_argument("--export-dir", default=None, help="where --env export writes the job (default: results/<name>_job)")
    p.add_argument("--n-clients", type=int, default=n_clients, help="number of sites (site-1 .. site-N)")
    p.add_argument("--sites", nargs="+", default=None, help="explicit site names (overrides --n-clients)")
    p.add_argument("--num-rounds", type=int, default=num_rounds, help="federated rounds")
    p.add_argument("--local-epochs", type=int, default=local_epochs, help="local epochs per round")
    p.add_argument("--tracking", choices=tuple(TRACKING_CHOICES), default="both", help="dashboards to fill")
    p.add_argument("--data-root", default=data_root, help="folder the datalist paths are relative to")
    p.add_argument("--datalist-dir", default=datalist_dir, help="folder holding <site>.json datalists")
    p.add_argument("--workspace", default=str(ROOT / "workspace"), help="simulator / POC workspace root")
    p.add_argument("--seed", type=int, default=0, help="base seed; each site derives its own")
    p.add_argument("--name", default=name, help="job name (also the result folder's name)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per site; 0 shares the CPU cores among sites")
    p.add_argument("--no-cross-site-eval", action="store_true", help="skip cross-site evaluation at the end")
    p.add_argument("--site-env", action="append", default=[], metavar="SITE:VAR=VALUE",
                   help="--env poc: environment of one site's client, e.g. site-1:FL_DATA_ROOT=/data/a (repeatable)")
    p.add_argument("--poc-timeout", type=float, default=3600.0, help="--env poc: seconds the job may run")
    p.add_argument("--startup-kit", default=None, metavar="DIR",
                   help="--env prod: the admin's startup kit folder (holds startup/fed_admin.json)")
    p.add_argument("--prod-timeout", type=float, default=0.0,
                   help="--env prod: seconds to wait for the job (0: until it ends); the job keeps running after")
    add_privacy_options(p)
    add_console_options(p)
    return p


@contextlib.contextmanager
def at_repo_root():
    """NVFlare resolves the relative client script against the working directory: build and run from ROOT."""
    old = Path.cwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(old)


def parse_job_args(parser: argparse.ArgumentParser, argv=None, check=None) -> argparse.Namespace:
    """Parse the options, run ``check(args)`` (the job's pre-flight data check, before any heavy import), then
    import NVFlare's recipe module without letting it re-read ``sys.argv``."""
    args = parser.parse_args(argv)
    if check is not None:
        check(args)
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        import nvflare.recipe.spec  # noqa: F401  (consumes --export/--export-dir from sys.argv on import)
    finally:
        sys.argv = saved
    return args


def sites_of(args) -> list[str]:
    return args.sites or [f"site-{i}" for i in range(1, args.n_clients + 1)]


def common_config(args) -> dict:
    """LearnerConfig fields that come straight from the common options (absolute paths for the simulator)."""
    return {
        "data_root": str(Path(args.data_root).resolve()),
        "datalist_dir": str(Path(args.datalist_dir).resolve()),
        "local_epochs": args.local_epochs,
        "seed": args.seed,
        "num_threads": args.threads,
        "n_clients": len(sites_of(args)),
        "tracking": TRACKING_CHOICES[args.tracking],
    }


def stage_project(recipe, learner: type, config: LearnerConfig) -> None:
    """Put the ``src`` package and the learner config into the job's ``custom/`` folders (self-contained job)."""
    staging = Path(tempfile.mkdtemp(prefix="fl-job-"))
    staged = {
        "learner": f"{learner.__module__}.{learner.__qualname__}",
        "config_class": f"{type(config).__module__}.{type(config).__qualname__}",
        "config": config.to_dict(),
    }
    shutil.copytree(SRC_DIR, staging / "code" / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (staging / "config").mkdir()
    (staging / "config" / STAGED_CONFIG).write_text(json.dumps(staged, indent=2))
    # a folder's contents land in custom/, so stage the folders that *contain* src/ and the config
    recipe.add_client_file(str(staging / "code"))
    recipe.add_client_file(str(staging / "config"))
    recipe.add_server_file(str(staging / "code"))


def seeded_model(build: Callable, seed: int):
    """``build()`` under ``torch.manual_seed(seed)``: the job's initial global model, the same for the same seed."""
    import torch

    torch.manual_seed(seed)
    return build()


def initial_checkpoint(model, args) -> str:
    """Save ``model``'s weights as the job's initial global model; return the path relative to ROOT.

    Without it the server re-creates the model from its constructor arguments with unseeded random weights, so two
    runs with the same ``--seed`` would start from different models (sites are seeded, the server would not be).
    """
    import torch

    path = INITIAL_MODELS / f"{args.name}_seed{args.seed}_initial.pt"
    (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, ROOT / path)
    return str(path)


def build_job_recipe(args, build_model: Callable, learner: type, config: LearnerConfig, *,
                     controller_class=None, controller_args: dict | None = None, aggregator=None, recipe_class=None,
                     **recipe_kwargs):
    """A FedAvg-family :class:`~src.aggregators.controller.ControllerRecipe` running ``learner`` at every site.

    Args:
        build_model: builds the network; called under ``torch.manual_seed(args.seed)`` (the initial global model).
        learner, config: the site learner class and its configuration (staged into the job).
        controller_class, controller_args: the server workflow (default: ``FederatedFedAvg``).
        aggregator: the server's ``ModelAggregator`` (default: checked FedAvg weighted by steps).
        recipe_class: a :class:`ControllerRecipe` subclass that validates its own arguments (e.g. IOP-FL's).

    Personal keys of the learner (FedBN's norms, a decoder, ...) are also removed from every payload by NVFlare's
    ``ExcludeVars`` output filter: a second line of defence behind the learner, which never puts them in.
    """
    from src.aggregators.controller import ControllerRecipe
    from src.aggregators.fedavg import FedAvgAggregator

    model = seeded_model(build_model, args.seed)
    recipe_class = recipe_class or ControllerRecipe
    if controller_class is not None:
        recipe_kwargs["controller_class"] = controller_class
    if controller_args:
        recipe_kwargs["controller_args"] = controller_args
    with at_repo_root():
        recipe = recipe_class(
            name=args.name,
            model=model,
            initial_ckpt=initial_checkpoint(model, args),
            min_clients=len(sites_of(args)),
            num_rounds=args.num_rounds,
            train_script=CLIENT_SCRIPT,
            key_metric=learner.key_metric,
            aggregator=aggregator or FedAvgAggregator(),
            **recipe_kwargs,
        )
        stage_project(recipe, learner, config)
        add_standard_components(recipe, args)
        personal = learner.key_groups_of(model, config).personal
        exclude_personal_keys(recipe, [k for k in model.state_dict() if k in personal])
    return recipe


def exclude_personal_keys(recipe, personal_keys) -> None:
    """NVFlare ``ExcludeVars`` on every result a site sends (train, submit_model) when it has personal keys."""
    if not personal_keys:
        return
    from nvflare.app_common.filters.exclude_vars import ExcludeVars

    recipe.add_client_output_filter(ExcludeVars(exclude_vars=list(personal_keys)), tasks=["train", "submit_model"])


def add_standard_components(recipe, args) -> None:
    """Tracking receivers, cross-site evaluation and a short task-request interval (see nvflare-notes)."""
    from nvflare.recipe.utils import add_cross_site_evaluation, add_experiment_tracking

    for kind in TRACKING_CHOICES[args.tracking]:
        add_experiment_tracking(recipe, kind, tracking_config(args) if kind == "mlflow" else None)
    if not args.no_cross_site_eval:
        add_cross_site_evaluation(recipe)
    # the 2 s default between task requests dominates short rounds on a laptop
    recipe.add_server_config({"server": {"task_request_interval": 0.1}})
    add_privacy_filter(recipe, args)


def execute(recipe, args) -> Path | None:
    """Export, simulate or submit ``recipe`` as ``--env`` says; return the result folder (None for export)."""
    with at_repo_root():
        return _execute(recipe, args)


def _execute(recipe, args) -> Path | None:
    if args.env == "export":
        out = Path(args.export_dir or ROOT / "results" / f"{args.name}_job").resolve()
        if out.exists():
            shutil.rmtree(out)
        recipe.export(str(out.parent))
        exported = out.parent / recipe.name
        if exported != out:
            shutil.move(str(exported), str(out))
        print(f"job exported to {out}\nrun it with: nvflare simulator {out} -n {len(sites_of(args))} "
              f"-t {len(sites_of(args))} -w {ROOT / 'workspace' / args.name}")
        return None
    if args.env == "sim":
        from nvflare.recipe import SimEnv

        sites = sites_of(args)
        env = SimEnv(clients=sites, num_clients=len(sites), workspace_root=str(Path(args.workspace).resolve()),
                     log_config=sim_log_config(args))
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        run = recipe.execute(env)
        with contextlib.redirect_stdout(io.StringIO()):  # SimEnv prints a note that get_status returns None
            return Path(run.get_result())
    if args.env == "prod":
        from jobs.prod import submit_to_prod

        return submit_to_prod(recipe, args)
    from jobs.poc import submit_to_poc

    return submit_to_poc(recipe, args)
