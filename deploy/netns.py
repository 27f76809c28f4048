"""Separate network hosts on one machine: one Linux network namespace per participant, joined by a private bridge.

The server's namespace holds a bridge with the server's address; every other participant (sites, admin) gets its own
namespace and a veth pair whose far end is enslaved to that bridge. Addresses exist only inside these namespaces,
so nothing they send can reach the host's interfaces or any outside address (there is no route out), and the host's
own interfaces and routes are never touched. Needs root and ``ip netns`` (iproute2).

``python -m deploy.netns monitor --kit ADMIN_KIT --out FILE`` runs in the admin's namespace and appends one JSON line
per poll (``{"t": unix time, "clients": [...]}``) with the sites the server sees; the test reads timings from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NetnsTopology", "netns_unavailable_reason", "write_server_resources"]

SUBNET = "10.77.0"  # /24, private, only inside the namespaces created here


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def netns_unavailable_reason() -> str | None:
    """None when namespaces can be created here, else why not (for pytest's skip message)."""
    if os.geteuid() != 0:
        return f"network namespaces need root (euid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"flprobe{os.getpid() % 100000}"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` fails here: {made.stderr.strip()!r}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass
class NetnsTopology:
    """``server`` and ``peers`` as network hosts: ``ip netns exec <ns>`` prefixes and per-peer link control.

    Args:
        server: participant name of the server (its namespace holds the bridge and address ``SUBNET.1``).
        peers: the other participants (sites, admin); peer ``i`` gets ``SUBNET.(10 + i)``.
        tag: short unique tag for namespace and interface names (interface names have at most 15 characters).
    """

    server: str
    peers: Sequence[str]
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.peers = list(self.peers)
        self.names = {self.server: f"fls{self.tag}", **{p: f"fl{i}p{self.tag}" for i, p in enumerate(self.peers)}}
        self.addresses = {self.server: f"{SUBNET}.1", **{p: f"{SUBNET}.{10 + i}" for i, p in enumerate(self.peers)}}

    @property
    def server_address(self) -> str:
        return self.addresses[self.server]

    def prefix(self, participant: str) -> list[str]:
        """Command prefix that runs a program as ``participant``'s network host."""
        return ["ip", "netns", "exec", self.names[participant]]

    def _veth(self, peer: str) -> tuple[str, str]:
        i = self.peers.index(peer)
        return f"v{i}a{self.tag}"[:15], f"v{i}b{self.tag}"[:15]  # (peer side, bridge side)

    def create(self) -> None:
        """Create the namespaces, the bridge and one veth pair per peer (all inside the new namespaces)."""
        srv = self.names[self.server]
        self._add_ns(srv)
        _ip("-n", srv, "link", "add", "br0", "type", "bridge")
        _ip("-n", srv, "addr", "add", f"{self.server_address}/24", "dev", "br0")
        _ip("-n", srv, "link", "set", "br0", "up")
        for peer in self.peers:
            ns = self.names[peer]
            self._add_ns(ns)
            a, b = self._veth(peer)
            # created directly inside the peer's namespace, the bridge end moved to the server's: never on the host
            _ip("-n", ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", srv)
            _ip("-n", ns, "addr", "add", f"{self.addresses[peer]}/24", "dev", a)
            _ip("-n", ns, "link", "set", a, "up")
            _ip("-n", srv, "link", "set", b, "master", "br0")
            _ip("-n", srv, "link", "set", b, "up")

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.created.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")  # NVFlare's client and its job processes talk over loopback

    def cut(self, peer: str) -> None:
        """Take ``peer``'s link down (its bridge side): packets are dropped silently, as with a pulled cable."""
        _ip("-n", self.names[self.server], "link", "set", self._veth(peer)[1], "down")

    def restore(self, peer: str) -> None:
        _ip("-n", self.names[self.server], "link", "set", self._veth(peer)[1], "up")

    def listening_ports(self, participant: str | None = None) -> set[int]:
        """TCP ports in LISTEN state in ``participant``'s namespace (None: the host's own namespace)."""
        cmd = [*(self.prefix(participant) if participant else []), "ss", "-Hltn"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}

    def delete(self) -> None:
        """Delete every namespace created here (their veths and the bridge go with them)."""
        for ns in reversed(self.created):
            _ip("netns", "del", ns, check=False)
        self.created.clear()

    def __enter__(self) -> NetnsTopology:
        try:
            self.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.delete()


def write_server_resources(server_kit: Path, heart_beat_timeout: float, snapshot_dir: Path) -> Path:
    """``local/resources.json`` of a server kit with a shorter dead-client timeout and a private snapshot folder.

    NVFlare drops a site that has not been heard from for ``heart_beat_timeout`` seconds (600 by default); a real
    deployment may lower it to notice a failed site sooner. The snapshot store defaults to a shared ``/tmp`` path.
    """
    default = Path(server_kit) / "local" / "resources.json.default"
    resources = json.loads(default.read_text())
    for server in resources.get("servers", []):
        server["heart_beat_timeout"] = heart_beat_timeout
    storage = resources.get("snapshot_persistor", {}).get("args", {}).get("storage", {}).get("args")
    if storage is not None:
        storage["root_dir"] = str(snapshot_dir)
    out = default.with_name("resources.json")
    out.write_text(json.dumps(resources, indent=2))
    return out


def monitor(kit: str, out: str, interval: float, username: str) -> None:
    """Append the server's connected sites to ``out`` every ``interval`` seconds until terminated."""
    from deploy.admin import close_quietly, login

    session = None
    with open(out, "a") as f:
        while True:
            clients: list[str] | None = None
            try:
                if session is None:
                    session = login(username, kit, timeout=10)
                clients = sorted(c.name for c in session.get_system_info().client_info)
            except Exception as e:  # server not up yet or unreachable: record and retry
                close_quietly(session)
                session = None
                f.write(json.dumps({"t": time.time(), "error": f"{type(e).__name__}: {e}"[:200]}) + "\n")
            if clients is not None:
                f.write(json.dumps({"t": time.time(), "clients": clients}) + "\n")
            f.flush()
            time.sleep(interval)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.netns", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("monitor", help="record the server's connected sites (run in the admin's namespace)")
    m.add_argument("--kit", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--interval", type=float, default=0.5)
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jobs.prod import admin_username

    monitor(a.kit, a.out, a.interval, admin_username(a.kit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
