"""What every job script shares: its command-line options, staging of the project code, and running it.

A job script only composes: parse options -> ``build_recipe(args)`` (importable, no side effects) -> ``execute``.
``build_recipe`` hands :func:`build_job_recipe` a model *factory*: the initial global model is built there under
``torch.manual_seed(args.seed)``, so the same ``--seed`` gives the same start. NVFlare is imported lazily because
importing ``nvflare.recipe`` strips ``--export-dir`` from ``sys.argv``.

Reliability rules (docs/reliability.md):

* nothing the tools did not create is deleted: ``--env export`` replaces a folder only when it holds the marker
  file an earlier export wrote (:data:`EXPORT_MARKER`), never the checkout, the working directory, the home folder
  or a folder above them; every simulator run gets its own folder ``<workspace>/<name>/runs/<run id>`` (a
  ``latest`` link points at the newest), and an existing run folder is replaced only with ``--overwrite`` and
  only when it holds :data:`RUN_MARKER`; the staging folders of the job's code live under
  ``<workspace>/.staging`` and are removed after the run, or by the next run when a killed one left them;
* ``--min-clients`` / ``--round-timeout``: see :class:`src.aggregators.controller.FederatedFedAvg`;
* SIGINT/SIGTERM on a job script stops every process it started (the simulator and its site workers run in
  their own sessions, so they are found as descendants and terminated, then killed) and writes the summary of
  the rounds completed so far.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_prep.common import own_folder  # noqa: E402
from jobs.console import add_console_options, sim_log_config, tracking_config  # noqa: E402
from src.comm.options import add_quantize_options, check_quantize  # noqa: E402
from src.config.base import LearnerConfig  # noqa: E402
from src.learners.client_api import STAGED_CONFIG  # noqa: E402
from src.privacy.filters import add_privacy_filter, add_privacy_options  # noqa: E402

SRC_DIR = ROOT / "src"
# relative to ROOT: NVFlare keeps a relative script path, so the exported job finds it in custom/jobs/
CLIENT_SCRIPT = "jobs/fl_client.py"
# relative to ROOT: NVFlare bundles a relative initial checkpoint into the server app of the job
INITIAL_MODELS = Path("workspace") / "initial_models"
#: file an export writes into its folder; only a folder holding it is ever replaced by a later export
EXPORT_MARKER = ".fl_job_export"
#: file written into every run folder (options, status); only a folder holding it is replaced with --overwrite
RUN_MARKER = "run.json"
STAGING = ".staging"
RUNNER_SYNC_TIMEOUT_S = 300.0
#: seconds the processes of a stopped job get between SIGTERM and SIGKILL
STOP_GRACE_S = 10.0
TRACKING_CHOICES = {
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow",),
    "both": ("tensorboard", "mlflow"),
    "none": (),
}


#: memory one site's simulator process needs, for the default parallelism, unless the job states its own
#: (``job_parser``'s ``site_mb``): the 2-D prostate job peaks at 0.73 GB RSS on tiny data, ~0.6 GB of it python +
#: torch + MONAI + NVFlare imported (benchmarks/scale.py); MedNIST's DenseNet121 states ~1 GB (its measured PSS)
SITE_MB_ESTIMATE = 800


def job_parser(description: str, *, name: str, n_clients: int, num_rounds: int, local_epochs: int,
               data_root: str, datalist_dir: str, site_mb: float | None = None) -> argparse.ArgumentParser:
    """The options every job takes (``--help`` shows the job's own defaults); ``site_mb``: the job's measured
    memory per site process where it differs from :data:`SITE_MB_ESTIMATE` (the default parallelism plans with it)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(site_mb_estimate=site_mb or SITE_MB_ESTIMATE)
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
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per site; 0: the CPU cores shared among the sites that run at once")
    p.add_argument("--sim-workers", type=int, default=0,
                   help="--env sim: site processes that run at once (0: one per site while they fit in memory, "
                        "see jobs.common.parallelism); with fewer than the sites, the simulator starts a fresh "
                        "process for every task of a site, which carries on from its saved state (model, "
                        "optimiser, RNG) exactly")
    p.add_argument("--no-cross-site-eval", action="store_true", help="skip cross-site evaluation at the end")
    p.add_argument("--site-env", action="append", default=[], metavar="SITE:VAR=VALUE",
                   help="--env poc: environment of one site's client, e.g. site-1:FL_DATA_ROOT=/data/a (repeatable)")
    p.add_argument("--poc-timeout", type=float, default=3600.0, help="--env poc: seconds the job may run")
    p.add_argument("--min-clients", type=int, default=0,
                   help="fewest sites whose result a round needs; a dead site is then left out (0: every site)")
    p.add_argument("--round-timeout", type=int, default=0,
                   help="seconds a round waits for the sites (0: no limit; dead simulator workers and "
                        "disconnected sites are detected without it)")
    p.add_argument("--run-id", default=None,
                   help="--env sim: name of this run's folder <workspace>/<name>/runs/<run id> (default: UTC time)")
    p.add_argument("--resume", default=None, metavar="RUN_FOLDER",
                   help="--env sim: continue a stopped or finished run (its last global model, completed rounds and "
                        "every site's saved state) up to --num-rounds in total")
    p.add_argument("--overwrite", action="store_true",
                   help="--env sim: replace an existing run folder of the same --run-id (only one a run wrote)")
    p.add_argument("--startup-kit", default=None, metavar="DIR",
                   help="--env prod: the admin's startup kit folder (holds startup/fed_admin.json)")
    p.add_argument("--prod-timeout", type=float, default=0.0,
                   help="--env prod: seconds to wait for the job (0: until it ends); the job keeps running after")
    add_privacy_options(p)
    add_quantize_options(p)
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
    n_sites = len(sites_of(args))
    if not 0 <= args.min_clients <= n_sites:
        parser.error(f"--min-clients must be between 0 and the number of sites ({n_sites}), got {args.min_clients}")
    if getattr(args, "sim_workers", 0) < 0 or args.sim_workers > n_sites:
        parser.error(f"--sim-workers must be between 0 (automatic) and the number of sites ({n_sites}), "
                     f"got {args.sim_workers}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: automatic), got {args.threads}")
    if args.round_timeout < 0:
        parser.error(f"--round-timeout must be >= 0 seconds, got {args.round_timeout}")
    if args.run_id is not None and (not args.run_id or Path(args.run_id).name != args.run_id
                                    or args.run_id in (".", "..", "latest")):
        parser.error(f"--run-id must be a plain folder name, got {args.run_id!r}")
    try:
        check_quantize(getattr(args, "quantize", "none"))
    except ValueError as e:
        parser.error(str(e))
    if check is not None:
        check(args)
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        import nvflare.recipe.spec  # noqa: F401  (consumes --export/--export-dir from sys.argv on import)
    finally:
        sys.argv = saved
    return args


#: share of the memory available at launch the default parallelism may plan for the site processes
MEMORY_SHARE = 0.8


def parallelism(args) -> dict:
    """How the simulator shares this machine: site processes at once and torch threads per site.

    Default (``--sim-workers 0``, ``--threads 0``): every site its own process, the whole run long, while
    ``sites x`` the job's memory per site (``SITE_MB_ESTIMATE`` unless the job states its own) fits in
    ``MEMORY_SHARE`` of the memory available at launch; else as many processes as fit (never fewer than
    ``min(sites, cores)``), the sites taking turns. Torch threads per site are
    ``cores // processes`` (at least 1), so the threads that compute never outnumber the cores by more than the
    processes do: 2 sites on 2 cores: 2 x 1 thread; 1 site: 1 x 2; 16 sites: 16 x 1 (time-sliced, no spinning
    OpenMP pools). Why not ``min(sites, cores)`` processes always: with fewer processes than sites NVFlare's
    simulator starts a fresh process for *every* task of a site (python, torch, MONAI and NVFlare imported again,
    the data cached again, the state restored), which measured ~30 s a turn on 2 loaded cores against ~2 s of
    training (docs/benchmarks.md). Either value can be set by hand; what was chosen is printed and kept in the
    run's settings. Decided once per ``args`` (the memory available changes during a launch; every part of the
    launch must see the same choice).
    """
    cores = os.cpu_count() or 1
    n_sites = len(sites_of(args))
    key = (cores, n_sites, getattr(args, "sim_workers", 0), getattr(args, "threads", 0))
    decided = getattr(args, "_parallelism", None)
    if decided is not None and decided[0] == key:
        return dict(decided[1])
    workers = getattr(args, "sim_workers", 0)
    if not workers:
        fit = int(MEMORY_SHARE * _available_mb() // getattr(args, "site_mb_estimate", SITE_MB_ESTIMATE))
        workers = min(n_sites, max(fit, min(n_sites, cores)))
    threads = getattr(args, "threads", 0) or max(1, cores // workers)
    choice = {"cpu_cores": cores, "n_sites": n_sites, "sim_workers": workers, "threads_per_site": threads}
    try:
        args._parallelism = (key, dict(choice))
    except AttributeError:  # an args object that takes no new attributes: decide again next time
        pass
    return choice


def _available_mb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().available / 2**20
    except Exception:  # no psutil / no /proc: plan as if memory were plentiful
        return float("inf")


def sites_of(args) -> list[str]:
    return args.sites or [f"site-{i}" for i in range(1, args.n_clients + 1)]


def common_config(args) -> dict:
    """LearnerConfig fields that come straight from the common options (absolute paths for the simulator)."""
    return {
        "data_root": str(Path(args.data_root).resolve()),
        "datalist_dir": str(Path(args.datalist_dir).resolve()),
        "local_epochs": args.local_epochs,
        "seed": args.seed,
        "num_threads": parallelism(args)["threads_per_site"],
        "n_clients": len(sites_of(args)),
        "tracking": TRACKING_CHOICES[args.tracking],
        "resume": bool(getattr(args, "resume", None)),
    }


def staging_root(args) -> Path:
    return Path(args.workspace).resolve() / STAGING


def clean_stale_staging(root: Path) -> list[Path]:
    """Remove staging folders ``fl-job-<pid>-*`` whose process no longer runs (a killed earlier run's)."""
    import psutil

    removed = []
    for folder in sorted(root.glob("fl-job-*")) if root.is_dir() else []:
        try:
            pid = int(folder.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not psutil.pid_exists(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def stage_project(recipe, learner: type, config: LearnerConfig, root: Path | None = None) -> Path:
    """Put the ``src`` package and the learner config into the job's ``custom/`` folders (self-contained job).

    The staging folder (under ``root``, default the system temp folder) is returned; :func:`execute` removes it.
    """
    if root is not None:
        own_folder(root, "jobs staging")
        clean_stale_staging(root)
    staging = Path(tempfile.mkdtemp(prefix=f"fl-job-{os.getpid()}-", dir=root))
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
    return staging


def seeded_model(build: Callable, seed: int):
    """``build()`` under ``torch.manual_seed(seed)``: the job's initial global model, the same for the same seed."""
    import torch

    torch.manual_seed(seed)
    return build()


def initial_checkpoint(model, args, tag: str = "") -> str:
    """Save ``model``'s weights as the job's initial global model; return the path relative to ROOT.

    Without it the server re-creates the model from its constructor arguments with unseeded random weights, so two
    runs with the same ``--seed`` would start from different models (sites are seeded, the server would not be).
    """
    import torch

    path = INITIAL_MODELS / f"{args.name}_seed{args.seed}{tag}_initial.pt"
    own_folder((ROOT / path).parent, "jobs initial checkpoints")
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
    start_round, num_rounds = 0, args.num_rounds
    if getattr(args, "resume", None):
        point = resume_point(args.resume)
        start_round, num_rounds = point["rounds_done"], args.num_rounds - point["rounds_done"]
        if num_rounds < 1:
            raise SystemExit(f"--resume {args.resume}: {start_round} rounds are done already, --num-rounds "
                             f"{args.num_rounds} leaves none to run")
        import torch

        saved = torch.load(point["global_model"], map_location="cpu", weights_only=False)
        model.load_state_dict(saved.get("model", saved))
    recipe_class = recipe_class or ControllerRecipe
    if controller_class is not None:
        recipe_kwargs["controller_class"] = controller_class
    if controller_args:
        recipe_kwargs["controller_args"] = controller_args
    recipe_kwargs["site_policy"] = {"min_clients": args.min_clients, "round_timeout": args.round_timeout,
                                    # a site's worker process exiting means it died only when every site has
                                    # its own; with fewer workers (--sim-workers) they exit between turns
                                    "watch_sim_workers": args.env == "sim"
                                    and parallelism(args)["sim_workers"] == len(sites_of(args))}
    if start_round:
        recipe_kwargs["site_policy"]["start_round"] = start_round
    aggregator = aggregator or FedAvgAggregator()
    if isinstance(aggregator, FedAvgAggregator) and args.min_clients:
        aggregator.min_updates = max(aggregator.min_updates, args.min_clients)
    with at_repo_root():
        recipe = recipe_class(
            name=args.name,
            model=model,
            initial_ckpt=initial_checkpoint(model, args, f"_resumed_r{start_round}" if start_round else ""),
            min_clients=len(sites_of(args)),
            num_rounds=num_rounds,
            train_script=CLIENT_SCRIPT,
            key_metric=learner.key_metric,
            aggregator=aggregator,
            **recipe_kwargs,
        )
        recipe.fl_staging = stage_project(recipe, learner, config, staging_root(args))
        recipe.fl_key_metric = learner.key_metric
        add_standard_components(recipe, args)
        personal = learner.key_groups_of(model, config).personal
        exclude_personal_keys(recipe, [k for k in model.state_dict() if k in personal])
        add_sending_ends(recipe, args)
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
        if args.round_timeout:  # a dead site must not hold cross-site evaluation for NVFlare's 600 s / 6000 s
            add_cross_site_evaluation(recipe, submit_model_timeout=args.round_timeout,
                                      validation_timeout=args.round_timeout)
        else:
            add_cross_site_evaluation(recipe)
    # the 2 s default between task requests dominates short rounds on a laptop
    recipe.add_server_config({"server": {"task_request_interval": 0.1}})
    # a site's job process waits at most 60 s (NVFlare's default) for the server's job process to come up, then
    # fails the job; on a loaded machine (a POC on 2 shared cores) the server's can take longer to start
    recipe.add_client_config({"max_runner_sync_timeout": RUNNER_SYNC_TIMEOUT_S})
    add_receiving_ends(recipe, args)
    add_privacy_filter(recipe, args)


def add_receiving_ends(recipe, args) -> None:
    """Where a model arrives: the server counts each site's result as it came (``WireBytes``) and then
    dequantizes it; a site dequantizes the global model first, before the privacy filter remembers it."""
    from src.comm.options import RESULT_TASKS
    from src.comm.wire import WireBytes

    recipe.add_server_input_filter(WireBytes("result"), tasks=list(RESULT_TASKS))
    if getattr(args, "quantize", "none") != "none":  # NVFlare's quantizer module loads bitsandbytes (seconds)
        from src.comm.quantize import add_receiving_ends as dequantizers

        dequantizers(recipe, args.quantize)


def add_sending_ends(recipe, args) -> None:
    """Where a model leaves, after every other filter: the sites' and the server's quantizer, then the server
    counts each task as it goes to its site (``WireBytes``)."""
    from src.comm.options import TASK_DATA_TASKS
    from src.comm.wire import WireBytes

    if getattr(args, "quantize", "none") != "none":
        from src.comm.quantize import add_sending_ends as quantizers

        quantizers(recipe, args.quantize)
    recipe.add_server_output_filter(WireBytes("task"), tasks=list(TASK_DATA_TASKS))


def execute(recipe, args) -> Path | None:
    """Export, simulate or submit ``recipe`` as ``--env`` says; return the result folder (None for export)."""
    try:
        with at_repo_root():
            return _execute(recipe, args)
    finally:
        staging = getattr(recipe, "fl_staging", None)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def protected_folders() -> list[Path]:
    """Folders an export may never replace: the checkout, the working directory, the home folder, ``/``."""
    return [p.resolve() for p in (ROOT, Path.cwd(), Path.home(), Path("/"))]


def check_replaceable(out: Path, marker: str, what: str, hint: str) -> None:
    """Refuse (SystemExit with the reason) to replace ``out`` unless it is absent, empty or holds ``marker``."""
    out = out.resolve()
    for p in protected_folders():
        if out == p or out in p.parents:
            raise SystemExit(f"refusing to use {out} as {what}: it is (or contains) {p}; {hint}")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise SystemExit(f"refusing to replace {out} ({what}): it is not a folder; {hint}")
    if any(out.iterdir()) and not (out / marker).is_file():
        raise SystemExit(f"refusing to replace {out} ({what}): it is not empty and was not written by this tool "
                         f"(no {marker} in it); {hint}")


def export_job(recipe, args) -> Path:
    out = Path(args.export_dir or ROOT / "results" / f"{args.name}_job").resolve()
    check_replaceable(out, EXPORT_MARKER, "--export-dir", "choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))  # NVFlare writes <dir>/<name>: a fresh dir
    try:
        recipe.export(str(tmp))
        if out.exists():
            shutil.rmtree(out)  # empty, or an earlier export (marker checked above)
        (tmp / recipe.name).rename(out)
        (out / EXPORT_MARKER).write_text(json.dumps({"job": recipe.name, "written_by": "jobs/common.py export"}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resume_point(folder: str | Path) -> dict:
    """What a ``--resume`` run continues from: completed rounds, the last global model, the sites' state."""
    from src.reporting.summary import find_server_dir

    folder = Path(folder).resolve()
    if not (folder / RUN_MARKER).is_file():
        raise SystemExit(f"--resume {folder}: not a run folder (no {RUN_MARKER})")
    try:
        server = find_server_dir(folder)
    except FileNotFoundError as e:
        raise SystemExit(f"--resume {folder}: {e}") from None
    rounds = server / "metrics" / "round_metrics.jsonl"
    done = len(rounds.read_text().splitlines()) if rounds.is_file() else 0
    model = server / "app_server" / "FL_global_model.pt"
    if done == 0 or not model.is_file():
        raise SystemExit(f"--resume {folder}: no completed round to resume from")
    return {"folder": folder, "server_dir": server, "rounds_done": done, "global_model": model,
            "site_state": folder / "site_state"}


def run_folder(args) -> Path:
    """This run's own folder ``<workspace>/<name>/runs/<run id>``; an existing one only with ``--overwrite``."""
    runs = Path(args.workspace).resolve() / args.name / "runs"
    run_id = args.run_id or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = runs / run_id
    if args.run_id is None:
        n = 1
        while folder.exists():
            n += 1
            folder = runs / f"{run_id}-{n}"
    elif folder.exists():
        if not args.overwrite:
            raise SystemExit(f"run folder {folder} exists (a previous run {run_id!r}); pass --overwrite to replace "
                             f"it or choose another --run-id")
        check_replaceable(folder, RUN_MARKER, "the run folder", "choose another --run-id")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_run_status(folder, args, "running")
    latest = runs.parent / "latest"
    if latest.is_symlink() or not latest.exists():
        tmp_link = runs.parent / f".latest-{os.getpid()}"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(Path("runs") / folder.name)
        tmp_link.replace(latest)  # atomic: never a moment without the link
    return folder


def write_run_status(folder: Path, args, status: str, **extra) -> None:
    path = folder / RUN_MARKER
    info = json.loads(path.read_text()) if path.is_file() else {"options": vars(args), "started": time.time()}
    info.update(status=status, updated=time.time(), **extra)
    path.write_text(json.dumps(info, indent=2, default=str))


class JobStopped(BaseException):
    """SIGINT/SIGTERM reached the job script (a BaseException so no ``except Exception`` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into :class:`JobStopped` in this process (children forked meanwhile keep defaults)."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked simulator process: die as the signal would make it
            os._exit(128 + signum)
        raise JobStopped(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def stop_descendants(grace: float = STOP_GRACE_S, keep: frozenset[int] = frozenset()) -> list[int]:
    """SIGTERM every descendant of this process but ``keep`` (those that ran before the job), SIGKILL those alive
    after ``grace`` s; return their pids.

    The simulator starts its site workers with ``setsid``: they are not in our process group, but they are our
    descendants, so they are found here.
    """
    import psutil

    from deploy.processes import terminate_then_kill

    procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in keep]
    terminate_then_kill(procs, grace)
    return [p.pid for p in procs]


def stop_reason(folder: Path) -> str | None:
    """The server's own words on why it stopped the run (see ``STOP_MARKER``), from its log."""
    from src.aggregators.controller import STOP_MARKER

    for log in sorted(folder.rglob("log.txt")):
        for line in log.read_text(errors="replace").splitlines():
            if STOP_MARKER in line:
                return line.split(STOP_MARKER, 1)[1].strip()
    return None


def summarise_partial(folder: Path, key_metric: str | None) -> None:
    """The summary of the rounds completed so far (a stopped or failed run); never raises."""
    if key_metric is None:
        return
    try:
        from src.reporting.summary import report

        report(folder, key_metric=key_metric, quiet=True, publish=False)
        print(f"summary of the completed rounds written under {folder}", file=sys.stderr)
    except Exception as e:
        print(f"no summary written ({type(e).__name__}: {e})", file=sys.stderr)


def _execute(recipe, args) -> Path | None:
    if args.env == "export":
        out = export_job(recipe, args)
        print(f"job exported to {out}\nrun it with: nvflare simulator {out} -n {len(sites_of(args))} "
              f"-t {len(sites_of(args))} -w {ROOT / 'workspace' / args.name}")
        return None
    if args.env == "sim":
        return _simulate(recipe, args)
    if args.env == "prod":
        from jobs.prod import submit_to_prod

        return submit_to_prod(recipe, args)
    from jobs.poc import submit_to_poc

    return submit_to_poc(recipe, args)


def _simulate(recipe, args) -> Path:
    from nvflare.recipe import SimEnv

    from src.learners.client_api import SITE_STATE_ENV

    sites = sites_of(args)
    folder = run_folder(args)
    point = resume_point(args.resume) if getattr(args, "resume", None) else None
    if point is not None and point["site_state"].is_dir():
        shutil.copytree(point["site_state"], folder / "site_state")
        write_run_status(folder, args, "running", resumed_from=str(point["folder"]), start_round=point["rounds_done"])
    os.environ[SITE_STATE_ENV] = str(folder / "site_state")
    share = parallelism(args)
    print(f"simulator: {share['n_sites']} sites, {share['sim_workers']} site processes at once x "
          f"{share['threads_per_site']} torch threads each, on {share['cpu_cores']} CPU cores", flush=True)
    env = SimEnv(clients=sites, num_clients=len(sites), num_threads=share["sim_workers"], workspace_root=str(folder),
                 log_config=sim_log_config(args))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    key_metric = getattr(recipe, "fl_key_metric", None)
    import psutil

    before = frozenset(p.pid for p in psutil.Process().children(recursive=True))
    try:
        with stop_on_signals():
            try:
                run = recipe.execute(env)
                with contextlib.redirect_stdout(io.StringIO()):  # SimEnv prints a note that get_status returns None
                    result = Path(run.get_result())
            finally:
                stop_descendants(keep=before)
    except JobStopped as e:
        write_run_status(folder, args, "stopped", reason=str(e))
        summarise_partial(folder, key_metric)
        raise SystemExit(f"{args.name}: {e}; the processes it started are stopped; run folder {folder}") from None
    except RuntimeError as e:
        reason = stop_reason(folder)
        write_run_status(folder, args, "failed", reason=reason or str(e))
        summarise_partial(folder, key_metric)
        raise RuntimeError(f"{e}" + (f"\nserver: {reason}" if reason else "")) from None
    finally:
        os.environ.pop(SITE_STATE_ENV, None)
    extra = {}
    if point is not None:
        continue_curves(point["server_dir"], result)
        extra["mlflow_runs"] = continue_mlflow_curves(point, args)
    write_run_status(folder, args, "completed", result=str(result), **extra)
    return result


def continue_mlflow_curves(point: dict, args) -> dict[str, str]:
    """The resumed run's MLflow site runs continue the earlier run's curves (``continue_site_runs``); returns
    ``{site: run id}`` (empty without MLflow tracking or without the project store)."""
    from jobs.console import tracking_uri_of, uses_project_store
    from src.reporting.mlflow_results import continue_site_runs

    old_options = json.loads((point["folder"] / RUN_MARKER).read_text()).get("options", {})
    old_launch = old_options.get("launch")
    if args.tracking not in ("mlflow", "both") or not uses_project_store(args) or not old_launch:
        return {}
    old_uri = tracking_uri_of(argparse.Namespace(**{**vars(args), **old_options}))
    return continue_site_runs(tracking_uri_of(args), args.name, old_launch, args.launch, point["rounds_done"],
                              old_tracking_uri=old_uri)


def continue_curves(previous_server: Path, result: Path) -> None:
    """Put the resumed-from run's TensorBoard events beside this run's, so each curve runs on over all rounds."""
    from src.reporting.summary import find_server_dir

    old, new = previous_server / "tb_events", find_server_dir(result) / "tb_events"
    if not (old.is_dir() and new.is_dir()):
        return
    for event in old.rglob("events.out.tfevents.*"):
        target = new / event.parent.relative_to(old)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(event, target / f"{event.name}.resumed-from")
