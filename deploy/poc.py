"""A provisioned federation on this machine (POC): provision, start, submit, follow, download, stop.

Unlike ``nvflare poc`` / ``PocEnv`` this provisions with the production tool (``nvflare provision``) from
``deploy/project.yml`` (tcp scheme, see the comment there), so the startup kits, certificates and start scripts are
exactly those a real deployment ships; only the server's host name is ``localhost`` and the ports are free ones.
Every process it starts is stopped again, also on Ctrl-C, SIGTERM or failure, within a bounded time: first
through the admin API, then by terminating the process trees, then by killing whatever still runs from the
workspace (NVFlare starts job processes in new sessions, so a process group kill would miss them).

Command line::

    python -m deploy.poc run --job prostate_fedavg -- --num-rounds 2 --n-clients 2
    python jobs/prostate_fedavg.py --env poc --num-rounds 2 --n-clients 2     # the same
    python -m deploy.poc provision --sites site-1 site-2    # only write the startup kits
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deploy.admin import close_quietly, login
from deploy.processes import terminate_then_kill

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILE = ROOT / "deploy" / "project.yml"
TERMINAL_PREFIX = "FINISHED"
#: file provision writes into its workspace; an existing workspace is replaced only when it holds it
POC_MARKER = ".fl_poc_workspace"
# server log lines worth showing while a job runs (FedAvg rounds, aggregation, cross-site evaluation, errors)
#: what stop() removes from the workspace: the participants' temp folders and the job store (jobs, their results,
#: snapshots; a job's result is downloaded before the stop); the kits and their logs stay for reading
RUNTIME_DIRS = ("tmp", "store")
#: files the start scripts and NVFlare write into a kit while it runs
RUNTIME_FILES = ("pid.fl", "daemon_pid.fl", "shutdown.fl", "restart.fl")
#: times follow() logs in again after the admin connection dropped (seen at load average 20+ on 2 cores)
MAX_ADMIN_RECONNECTS = 5
PROGRESS_MARKERS = ("started.", "aggregating", "Finished FedAvg", "Beginning model validation", "ERROR")

__all__ = ["PocDeployment", "PocError", "render_project", "free_port"]


class PocError(RuntimeError):
    """The POC could not be provisioned, started or did not run the job to completion."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_own_workspace(workspace: Path) -> None:
    """Refuse (PocError) to replace ``workspace`` unless it is absent, empty or an earlier POC workspace."""
    workspace = Path(workspace).resolve()
    for p in (ROOT, Path.cwd().resolve(), Path.home().resolve(), Path("/")):
        if workspace == p or workspace in p.parents:
            raise PocError(f"refusing to use {workspace} as the POC workspace: it is (or contains) {p}")
    if workspace.exists() and (not workspace.is_dir() or (any(workspace.iterdir())
                                                          and not (workspace / POC_MARKER).is_file())):
        raise PocError(f"refusing to replace {workspace}: it is not an earlier POC workspace (no {POC_MARKER}); "
                       f"choose another --workspace")


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def render_project(
    template: Mapping, sites: Sequence[str], host: str, fed_learn_port: int, admin_port: int
) -> dict:
    """``template`` (a parsed project.yml) with exactly ``sites`` as clients, ``host`` as server name and ports.

    Sites missing from the template get their own organisation (``org_<site>``); a site's name is what selects its
    datalist, so it is the one thing a hospital must not rename.
    """
    if not sites:
        raise ValueError(f"sites must name at least one client, got {list(sites)!r}")
    project = {k: v for k, v in template.items() if k != "participants"}
    participants = list(template.get("participants", []))
    servers = [p for p in participants if p.get("type") == "server"]
    if len(servers) != 1:
        raise ValueError(f"project.yml must define exactly one server, got {[p.get('name') for p in servers]!r}")
    clients = {p["name"]: p for p in participants if p.get("type") == "client"}
    server = {**servers[0], "name": host, "fed_learn_port": fed_learn_port, "admin_port": admin_port}
    out = [server]
    for site in sites:
        org = "org_" + "".join(ch if ch.isalnum() else "_" for ch in site)
        out.append(dict(clients.get(site, {"name": site, "type": "client", "org": org})))
    out += [p for p in participants if p.get("type") not in ("server", "client")]
    if not any(p.get("type") == "admin" and p.get("role") == "project_admin" for p in out):
        raise ValueError("project.yml must define an admin with role project_admin (it submits the jobs)")
    project["participants"] = out
    return project


@dataclass
class PocDeployment:
    """One provisioned federation on localhost: a server, one client per site and the project admin.

    Args:
        workspace: folder for the startup kits, the participants' workspaces and logs (wiped by :meth:`provision`).
        sites: client names; each is the site name its learner reads data for.
        project_file: the project.yml to provision from.
        site_env: extra environment per site, e.g. ``{"site-1": {"FL_DATA_ROOT": "/data/site1"}}`` (how a real
            hospital points its client at its own data without editing the job).
        fed_learn_port, admin_port: server ports; 0 picks free ones.
        stop_timeout: seconds for the graceful shutdown before processes are terminated.
        host: the server's name in the kits (the address clients dial); ``localhost`` on one machine.
        launch_prefix: command prefix per participant, e.g. ``{"site-1": ["ip", "netns", "exec", "ns1"]}`` to start
            it on another (network) host; the server's key is ``host``.
        audit: install ``deploy/server_audit.py`` in the server's kit: every refused connection attempt (failed TLS
            handshake, refused registration) is a ``REFUSED-CONNECTION:`` warning in the server's ``log.txt``.
    """

    workspace: Path
    sites: Sequence[str]
    project_file: Path = PROJECT_FILE
    site_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    fed_learn_port: int = 0
    admin_port: int = 0
    stop_timeout: float = 20.0
    verbose: bool = True
    host: str = "localhost"
    launch_prefix: Mapping[str, Sequence[str]] = field(default_factory=dict)
    audit: bool = True

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace).resolve()
        self.sites = list(self.sites)
        unknown = sorted(set(self.site_env) - set(self.sites))
        if unknown:
            raise ValueError(f"site_env names sites that are not in the deployment: {unknown!r}")
        self.prod_dir: Path | None = None
        self.admin_name = ""
        self.processes: dict[str, subprocess.Popen] = {}
        self._session = None
        self._t0 = time.monotonic()

    # ---- provisioning -----------------------------------------------------------------------------------
    def provision(self) -> Path:
        """Write startup kits for the server, every site and the admin; return the ``prod_NN`` folder."""
        template = yaml.safe_load(Path(self.project_file).read_text())
        self.fed_learn_port = self.fed_learn_port or free_port()
        self.admin_port = self.admin_port or free_port()
        while self.admin_port == self.fed_learn_port:
            self.admin_port = free_port()
        project = render_project(template, self.sites, self.host, self.fed_learn_port, self.admin_port)
        check_own_workspace(self.workspace)
        if self.workspace.exists():
            shutil.rmtree(self.workspace)
        self.workspace.mkdir(parents=True)
        (self.workspace / POC_MARKER).write_text("written by deploy/poc.py provision\n")
        rendered = self.workspace / "project.yml"
        rendered.write_text(yaml.safe_dump(project, sort_keys=False))
        kits = self.workspace / "kits"
        proc = subprocess.run(
            [_nvflare_cli(), "provision", "-p", str(rendered), "-w", str(kits)],
            capture_output=True, text=True, timeout=300, cwd=self.workspace,
        )
        prods = sorted((kits / project["name"]).glob("prod_*"))
        if proc.returncode != 0 or not prods:
            raise PocError(f"nvflare provision failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        self.prod_dir = prods[-1]
        self._own_stores()
        if self.audit:
            from deploy.server_audit import install

            install(self.kit(self.host))
        self.admin_name = next(p["name"] for p in project["participants"] if p.get("role") == "project_admin")
        self._log(f"provisioned {', '.join(self.sites)} + server + {self.admin_name} in {self.prod_dir}")
        return self.prod_dir

    def _own_stores(self) -> None:
        """Job store and snapshot store under this workspace, owner-only, instead of NVFlare's machine-wide
        ``/tmp/nvflare`` (world-readable, shared by every run on the machine, never cleaned)."""
        store = self.workspace / "store"
        store.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.workspace, 0o700)
        for resources in self.prod_dir.glob("*/local/resources.json*"):
            text = resources.read_text()
            if "/tmp/nvflare/" in text:
                resources.write_text(text.replace("/tmp/nvflare/", f"{store}/"))

    def kit(self, participant: str) -> Path:
        if self.prod_dir is None:
            raise PocError("provision() first")
        return self.prod_dir / participant

    # ---- processes --------------------------------------------------------------------------------------
    def start_participant(self, name: str, kit: Path | None = None, env: Mapping[str, str] | None = None):
        """Start one participant's provisioned ``startup/sub_start.sh --once`` in its own process group."""
        kit = Path(kit or self.kit(name))
        script = kit / "startup" / "sub_start.sh"
        if not script.exists():
            raise PocError(f"no startup kit for {name!r}: {str(script)!r} does not exist")
        run_env = {**os.environ, **(env or {})}
        # the start scripts call `python3`: make it this interpreter (the project's venv)
        run_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{run_env.get('PATH', '')}"
        run_env.setdefault("PYTHONUNBUFFERED", "1")
        # the participants' temp files (multiprocessing sockets, job staging) under this workspace, owner-only,
        # so that stop() can remove them; NVFlare leaves them in /tmp otherwise
        tmp = self.workspace / RUNTIME_DIRS[0] / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_env["TMPDIR"] = str(tmp)
        log = open(kit / "console.txt", "ab")  # noqa: SIM115 (closed with the process in stop())
        key = name if name not in self.processes else f"{name}@{kit}"
        self.processes[key] = subprocess.Popen(
            [*self.launch_prefix.get(name, ()), "bash", str(script), "--once"], cwd=kit, env=run_env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        return self.processes[key]

    def start(self) -> None:
        """Start the server, wait until its admin port listens, then start every site."""
        if self.prod_dir is None:
            self.provision()
        self.start_participant(self.host)
        _wait_until(lambda: port_in_use(self.admin_port), 60, f"server admin port {self.admin_port} to listen",
                    self._check_alive)
        for site in self.sites:
            self.start_participant(site, env=self.site_env.get(site))
        self._log(f"started server (ports {self.fed_learn_port}/{self.admin_port}) and {len(self.sites)} sites")

    def _check_alive(self) -> None:
        server = self.processes.get(self.host)
        if server is not None and server.poll() is not None:
            raise PocError(f"the server exited (rc={server.returncode}); see {self.kit(self.host) / 'log.txt'}")

    # ---- admin API --------------------------------------------------------------------------------------
    @property
    def session(self):
        if self._session is None:
            self._session = login(self.admin_name, str(self.kit(self.admin_name)), timeout=60)
        return self._session

    def connected_sites(self) -> list[str]:
        return sorted(c.name for c in self.session.get_system_info().client_info)

    def wait_for_sites(self, timeout: float = 120.0) -> list[str]:
        """Block until every site has registered with the server; raise with the missing ones otherwise."""
        deadline = time.monotonic() + timeout
        connected: list[str] = []
        while time.monotonic() < deadline:
            self._check_alive()
            connected = self.connected_sites()
            if set(self.sites) <= set(connected):
                self._log(f"all sites connected: {', '.join(connected)}")
                return connected
            time.sleep(1.0)
        missing = sorted(set(self.sites) - set(connected))
        raise PocError(f"sites {missing} did not connect within {timeout:.0f} s; see their log.txt under "
                       f"{self.prod_dir}")

    def submit(self, job_dir: str | Path) -> str:
        job_id = self.session.submit_job(str(Path(job_dir).resolve()))
        self._log(f"submitted {Path(job_dir).name} as job {job_id}")
        return job_id

    def follow(self, job_id: str, timeout: float = 1800.0, poll: float = 2.0) -> dict:
        """Print the job's status and the server's round messages until it ends; return the job meta."""
        server_log = self.kit(self.host) / job_id / "log.txt"  # the server's job process logs here
        seen = 0
        deadline = time.monotonic() + timeout
        status = None
        lost = 0
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                meta = self.session.get_job_meta(job_id)
            except Exception as e:  # the admin connection drops when the machine is overloaded: log in again
                if type(e).__name__ != "NoConnection" or lost >= MAX_ADMIN_RECONNECTS:
                    raise
                lost += 1
                self._log(f"admin connection lost ({e}); reconnecting ({lost}/{MAX_ADMIN_RECONNECTS})")
                close_quietly(self._session)
                self._session = None
                time.sleep(poll)
                continue
            if meta.get("status") != status:
                status = meta.get("status")
                self._log(f"job {job_id}: {status}")
            if server_log.exists():
                with open(server_log, "rb") as f:
                    f.seek(seen)
                    chunk = f.read().decode(errors="replace")
                    seen += len(chunk.encode(errors="replace"))
                for line in chunk.splitlines():
                    if any(k in line for k in PROGRESS_MARKERS):
                        self._log("  server: " + line.split("] - ", 1)[-1].strip(" -")[:160])
            if str(status).startswith(TERMINAL_PREFIX):
                return meta
            time.sleep(poll)
        with contextlib.suppress(Exception):
            self.session.abort_job(job_id)
        raise PocError(f"job {job_id} did not finish within {timeout:.0f} s (last status {status!r}); aborted")

    def download(self, job_id: str, destination: str | Path) -> Path:
        destination = Path(destination).resolve()
        target = destination / job_id
        if target.exists():
            shutil.rmtree(target)
        path = Path(self.session.download_job_result(job_id, str(destination)))
        self._log(f"result downloaded to {path}")
        return path

    # ---- shutdown ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything started here: admin shutdown, then terminate, then kill; bounded by ``stop_timeout``."""
        if not self.processes:
            return
        if self._session is not None or self._server_up():
            with contextlib.suppress(Exception):
                self._graceful_shutdown()
        close_quietly(self._session)
        self._session = None
        leftovers = self._terminate_all(grace=max(5.0, self.stop_timeout / 3))
        self.processes.clear()
        self.remove_runtime_files()
        busy = [p for p in (self.fed_learn_port, self.admin_port) if p and port_in_use(p)]
        msg = f"stopped all participants; ports {self.fed_learn_port}/{self.admin_port} "
        self._log(msg + ("still in use: " + str(busy) if busy else "free") +
                  (f" ({leftovers} processes had to be killed)" if leftovers else ""))

    def remove_runtime_files(self) -> list[Path]:
        """Remove what the running participants created (:data:`RUNTIME_DIRS`, :data:`RUNTIME_FILES` in the kits);
        return the paths. Only after every process is stopped; nothing else in the workspace is touched."""
        removed = []
        if not (self.workspace / POC_MARKER).is_file():
            return removed
        for name in RUNTIME_DIRS:
            path = self.workspace / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if self.prod_dir is not None:
            for name in RUNTIME_FILES:
                for path in self.prod_dir.glob(f"*/{name}"):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def _server_up(self) -> bool:
        server = self.processes.get(self.host)
        return server is not None and server.poll() is None and bool(self.admin_port) and port_in_use(self.admin_port)

    def _graceful_shutdown(self) -> None:
        session = self.session
        for job in session.list_jobs():
            if not str(job.get("status", "")).startswith(TERMINAL_PREFIX):
                with contextlib.suppress(Exception):
                    session.abort_job(job["job_id"])
        session.shutdown("all", wait=False)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes.values()):
            time.sleep(0.5)

    def _terminate_all(self, grace: float) -> int:
        """SIGTERM, then SIGKILL, every process started here, its descendants and anything run from the kits."""
        import psutil

        procs: dict[int, psutil.Process] = {}
        for popen in self.processes.values():
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(popen.pid)
                procs[parent.pid] = parent
                procs.update({c.pid: c for c in parent.children(recursive=True)})
        marker = str(self.workspace)
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if p.pid != os.getpid() and any(marker in arg for arg in p.info["cmdline"] or ()):
                    procs[p.pid] = p
        alive = terminate_then_kill([p for p in procs.values() if _running(p)], grace)
        for popen in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=1)
        return len(alive)

    # ---- context ----------------------------------------------------------------------------------------
    def __enter__(self) -> PocDeployment:
        self._old_sigterm = signal.getsignal(signal.SIGTERM)
        if _is_main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if _is_main_thread():
                signal.signal(signal.SIGTERM, self._old_sigterm)

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[poc {time.monotonic() - self._t0:6.1f}s] {msg}", flush=True)


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _nvflare_cli() -> str:
    cli = Path(sys.executable).parent / "nvflare"
    return str(cli) if cli.exists() else "nvflare"


def _wait_until(check, timeout: float, what: str, on_poll=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if on_poll:
            on_poll()
        if check():
            return
        time.sleep(0.5)
    raise PocError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_job(
    job_dir: str | Path,
    sites: Sequence[str],
    workspace: str | Path,
    results: str | Path,
    site_env: Mapping[str, Mapping[str, str]] | None = None,
    connect_timeout: float = 120.0,
    job_timeout: float = 1800.0,
) -> Path:
    """Provision, start, wait for every site, submit ``job_dir``, follow it, download the result and stop.

    Returns the downloaded result folder; raises :class:`PocError` if the job does not finish ``FINISHED:COMPLETED``
    (the POC is stopped in every case).
    """
    with PocDeployment(Path(workspace), sites, site_env=site_env or {}) as poc:
        poc.provision()
        poc.start()
        poc.wait_for_sites(connect_timeout)
        job_id = poc.submit(job_dir)
        meta = poc.follow(job_id, timeout=job_timeout)
        result = poc.download(job_id, results)
        if meta.get("status") != "FINISHED:COMPLETED":
            raise PocError(f"job {job_id} ended {meta.get('status')!r}; logs and partial result in {result}")
        return result


@contextlib.contextmanager
def _job_argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = [saved[0], *argv]
    try:
        yield
    finally:
        sys.argv = saved


def parse_site_env(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["site-1:FL_DATA_ROOT=/data/a", ...]`` -> ``{"site-1": {"FL_DATA_ROOT": "/data/a"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        site, sep, assignment = item.partition(":")
        var, eq, value = assignment.partition("=")
        if not (sep and eq and site and var):
            raise ValueError(f"--site-env expects SITE:VAR=VALUE, got {item!r}")
        out.setdefault(site, {})[var] = value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.poc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one job script (jobs/<job>.py) on a freshly provisioned POC")
    r.add_argument("--job", required=True, help="job script name in jobs/, e.g. prostate_fedavg")
    r.add_argument("job_args", nargs=argparse.REMAINDER, help="options for the job script after --")
    v = sub.add_parser("provision", help="only write the startup kits (server, sites, admin)")
    v.add_argument("--sites", nargs="+", default=["site-1", "site-2", "site-3"])
    v.add_argument("--workspace", default=str(ROOT / "workspace" / "poc"))
    a = p.parse_args(argv)
    if a.command == "provision":
        PocDeployment(Path(a.workspace), a.sites).provision()
        return 0
    import importlib

    job_args = [x for x in a.job_args if x != "--"]
    if "--env" in job_args:
        raise SystemExit("deploy.poc run sets --env poc itself; drop --env from the job options")
    module = importlib.import_module(f"jobs.{a.job}")
    with _job_argv([]):
        return module.main([*job_args, "--env", "poc"])


if __name__ == "__main__":
    sys.exit(main())
