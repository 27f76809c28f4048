"""Start and stop a local MLflow tracking server (UI + REST API) on a job's store, within bounded time.

Used by the dashboard tests and the browser check; users open the same UI with the command :func:`ui_command`
prints (``mlflow ui --backend-store-uri sqlite:///<server dir>/mlflow.db``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["serve_mlflow", "rest", "ui_command"]


def ui_command(server_dir: str | Path, port: int = 5000) -> list[str]:
    db = Path(server_dir).resolve() / "mlflow.db"
    return [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}",
            "--host", "127.0.0.1", "--port", str(port)]


def rest(base_url: str, endpoint: str, payload: dict | None = None, timeout: float = 30.0) -> dict:
    """GET (``payload`` None, query in ``endpoint``) or POST JSON to ``base_url/api/2.0/mlflow/<endpoint>``."""
    url = f"{base_url}/api/2.0/mlflow/{endpoint}"
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


@contextlib.contextmanager
def serve_mlflow(server_dir: str | Path, port: int = 0, start_timeout: float = 120.0) -> Iterator[str]:
    """Serve ``<server_dir>/mlflow.db`` on 127.0.0.1; yield the base URL; stop the server (and its workers) after.

    Args:
        server_dir: the job's server folder holding ``mlflow.db``.
        port: 0 picks a free port.
        start_timeout: seconds to wait for ``/health``; the server is stopped and an error raised after that.
    """
    from deploy.poc import free_port

    server_dir = Path(server_dir).resolve()
    if not (server_dir / "mlflow.db").exists():
        raise FileNotFoundError(f"no MLflow store at {str(server_dir / 'mlflow.db')!r}")
    port = port or free_port()
    cmd = ui_command(server_dir, port)
    cmd[1] = "server"
    cmd += ["--workers", "1"]
    log = open(server_dir / "mlflow_server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=server_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited rc={proc.returncode}; see {server_dir / 'mlflow_server.log'}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server on port {port} not healthy within {start_timeout:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    # uvicorn workers share the group; make sure none outlived the parent
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
