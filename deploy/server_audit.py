"""Server-side record of refused connection attempts: one ``REFUSED-CONNECTION:`` warning per attempt in the
server's ``log.txt``.

NVFlare 2.9 refuses impostors in two places and records neither in a form an operator can act on:

* **TLS handshake** (a client whose certificate is not signed by the project's root CA, or none): the tcp driver's
  listening socket does the handshake inside ``accept()``, and Python's ``socketserver`` drops the ``SSLError``
  without a word. :class:`AuditedTcpDriver` is NVFlare's own ``TcpDriver`` with the handshake done explicitly
  (bounded by :data:`HANDSHAKE_TIMEOUT_S`) and the failure logged with the peer address and OpenSSL's reason. At
  this level the claimed site name cannot be known: the client's certificate is what failed, and in TLS 1.3 it
  travels encrypted, so Python never hands it over. The driver is loaded through NVFlare's supported custom-driver
  hook (``comm_driver_path`` in the server's ``local/comm_config.json``) for the scheme ``audtcp``, which only the
  server's ``fed_server.json`` names; clients keep ``tcp`` (the same bytes on the wire).
* **Another site's name** (a certificate of the project, but a different site name claimed, e.g. site-1's kit with
  its name changed to site-7): the cell layer drops every frame with ``connection CN00004 authenticated as 'site-1'
  but claimed endpoint 'site-7' requires identity 'site-7'`` (an ERROR without the peer address, which only the
  connection's earlier INFO line holds). :class:`RefusedRegistrationLogger`, a server component in the server's
  ``local/resources.json``, adds a logging handler that joins the two into one ``REFUSED-CONNECTION:`` line with the
  claimed name, the certificate's name and the peer address (once per connection), and wraps the running server's
  ``ClientManager.authenticate`` (an instance attribute, no NVFlare file changed) so that a registration refused
  there (identity check, disabled site) is logged with the claimed name, the certificate's CN and organisation, the
  peer address and the reason.

``deploy.poc.PocDeployment.provision`` installs both into the server's kit (``local/custom/``, which NVFlare puts on
``sys.path``); :func:`install` does the same for a production kit. This file is copied as it is, so it imports only
NVFlare and the standard library.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import ssl
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.fuel.f3.drivers.tcp_driver import TcpDriver, TcpStreamServer

MARKER = "REFUSED-CONNECTION:"
SCHEME = "audtcp"  # NVFlare has "atcp" (its asyncio tcp driver)
HANDSHAKE_TIMEOUT_S = 10.0
MODULE_NAME = "fl_server_audit"  # the file's name in the kit's local/custom/
COMPONENT_PATH = f"{MODULE_NAME}.RefusedRegistrationLogger"

log = logging.getLogger("fl_server_audit")


class _AuditedStreamServer(TcpStreamServer):
    def get_request(self):
        if not self.ssl_context:
            return super().get_request()
        raw, addr = socket.socket.accept(self.socket)  # the plain TCP connection; the handshake follows here
        peer = f"{addr[0]}:{addr[1]}"
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT_S)
            conn = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            conn.do_handshake()
            conn.settimeout(None)
        except (ssl.SSLError, OSError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__
            log.warning(f"{MARKER} TLS handshake from {peer} failed: {reason} ({e}); claimed site name: not "
                        f"known at the TLS level (no certificate of this project was accepted)")
            raw.close()
            raise OSError(f"TLS handshake from {peer} failed") from e
        return conn, addr


class AuditedTcpDriver(TcpDriver):
    """NVFlare's tcp driver whose listener logs every failed TLS handshake (scheme ``atcp``)."""

    @staticmethod
    def supported_transports():
        return [SCHEME]

    def listen(self, connector):
        self.connector = connector
        self.server = _AuditedStreamServer(self, connector)
        self.server.serve_forever()


def _cert_identity(request) -> tuple[str, str]:
    """(CN, O) of the certificate in a registration request, or ("none", "") / ("unreadable", "")."""
    from nvflare.apis.shareable import Shareable
    from nvflare.private.fed.utils.identity_utils import IdentityChallengeKey, load_crt_chain_bytes

    payload = request.payload
    data = payload.get(IdentityChallengeKey.CERT) if isinstance(payload, Shareable) else None
    if not data:
        return "none", ""
    try:
        from cryptography.x509.oid import NameOID

        cert = load_crt_chain_bytes(data)[0]
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return (cn[0].value if cn else "none"), (org[0].value if org else "")
    except Exception as e:  # a broken certificate is itself the reason
        return f"unreadable ({type(e).__name__})", ""


_CREATED = re.compile(r"Connection \[(CN\d+) (\S+) <= (\S+)")
_IMPOSTOR = re.compile(r"connection (CN\d+) authenticated as '([^']*)' but claimed endpoint '([^']*)'")


class _ImpostorWatcher(logging.Handler):
    """Turns NVFlare's cell-layer identity error into one ``REFUSED-CONNECTION:`` line per connection."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.peers: dict[str, str] = {}
        self.reported: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == log.name:
            return
        try:
            msg = record.getMessage()
        except Exception:
            return
        created = _CREATED.search(msg)
        if created:
            if len(self.peers) > 10_000:
                self.peers.clear()
            self.peers[created.group(1)] = created.group(3)
            return
        bad = _IMPOSTOR.search(msg)
        if bad and bad.group(1) not in self.reported:
            conn, cert_name, claimed = bad.groups()
            self.reported.add(conn)
            peer = self.peers.get(conn, "unknown address")
            log.warning(f"{MARKER} connection {conn} from {peer} refused: claimed site name {claimed!r}, but its "
                        f"certificate is that of {cert_name!r}")


class RefusedRegistrationLogger(FLComponent):
    """Logs a ``REFUSED-CONNECTION:`` warning for every registration the server refuses (parent server process)."""

    def handle_event(self, event_type: str, fl_ctx) -> None:
        if event_type != EventType.SYSTEM_START:
            return
        root = logging.getLogger()
        if not any(isinstance(h, _ImpostorWatcher) for h in root.handlers):
            root.addHandler(_ImpostorWatcher())
        manager = getattr(fl_ctx.get_engine(), "client_manager", None)
        if manager is None or getattr(manager.authenticate, "_fl_audited", False):
            return
        original = manager.authenticate

        def authenticate(request, ctx):
            client = original(request, ctx)
            if client is None:
                self._log_refusal(request, ctx)
            return client

        authenticate._fl_audited = True
        manager.authenticate = authenticate
        self.logger.info("logging refused client registrations")

    def _log_refusal(self, request, fl_ctx) -> None:
        from nvflare.private.defs import CellMessageHeaderKeys

        try:
            claimed = request.get_header(CellMessageHeaderKeys.CLIENT_NAME) or "unknown"
            peer = request.get_header(CellMessageHeaderKeys.CLIENT_IP) or "unknown address"
            cn, org = _cert_identity(request)
            reason = fl_ctx.get_prop(FLContextKey.UNAUTHENTICATED)
            if not reason:
                reason = (f"the certificate's CN {cn!r} is not the claimed name" if cn != claimed
                          else "the identity check failed (NVFlare's error just above)")
            log.warning(f"{MARKER} registration refused: claimed site name {claimed!r} from {peer}, certificate "
                        f"CN {cn!r}" + (f" (org {org!r})" if org else "") + f": {reason}")
        except Exception as e:  # never let the record break registration
            log.warning(f"{MARKER} registration refused (details unreadable: {type(e).__name__}: {e})")


def install(server_kit: str | os.PathLike) -> None:
    """Put this module, the driver hook, the scheme and the component into a provisioned server kit."""
    kit = Path(server_kit)
    custom = kit / "local" / "custom"
    custom.mkdir(parents=True, exist_ok=True)
    shutil.copy2(__file__, custom / f"{MODULE_NAME}.py")
    comm = kit / "local" / "comm_config.json"
    config = json.loads(comm.read_text()) if comm.is_file() else {}
    config["comm_driver_path"] = str(custom.resolve())
    comm.write_text(json.dumps(config, indent=2))
    fed_server = kit / "startup" / "fed_server.json"
    server = json.loads(fed_server.read_text())
    for s in server["servers"]:
        if s["service"].get("scheme") not in ("tcp", SCHEME):
            raise ValueError(f"{fed_server}: the refusal log needs the tcp scheme, got {s['service'].get('scheme')!r}")
        s["service"]["scheme"] = SCHEME
    fed_server.write_text(json.dumps(server, indent=2))
    for resources in (kit / "local").glob("resources.json*"):
        res = json.loads(resources.read_text())
        comps = res.setdefault("components", [])
        if not any(c.get("path") == COMPONENT_PATH for c in comps):
            comps.append({"id": "refused_registration_logger", "path": COMPONENT_PATH, "args": {}})
        if isinstance(res.get("class_allow_list"), list) and COMPONENT_PATH not in res["class_allow_list"]:
            res["class_allow_list"].append(COMPONENT_PATH)
        resources.write_text(json.dumps(res, indent=2))
