"""CURVE authentication and encryption of the ZMQ edge (``docs/server.md``, "Security").

ZeroMQ's CURVE mechanism (CurveZMQ, RFC 26) encrypts every frame and
authenticates both ends with Curve25519 key pairs; pyzmq's ``zmq.auth``
runs the ZAP handler (RFC 27) that decides which client keys the server
accepts.  Here:

* :func:`make_keys` writes a key pair (``NAME.key`` public, ``NAME.key_secret``
  secret, pyzmq's certificate format) -- ``gdmcom keys --out DIR``.
* :class:`CurveServer` is a server's side: its secret key file and either a
  folder of accepted client public keys or "any key".  :meth:`CurveServer.start`
  runs the ZAP authenticator on the server's context, :meth:`CurveServer.apply`
  makes a socket a CURVE server.  Refused clients get no reply; the
  authenticator logs the refused key and the server's socket monitor logs
  every failed handshake (:data:`HANDSHAKE_FAILED`).
* :class:`CurveClient` is a client's side: the server's public key and the
  client's own pair (an ephemeral one when none is given: enough for a server
  that accepts any key).  :func:`client_from_options` reads them from the
  ``server`` string's options (``server_key``, ``server_key_file``,
  ``client_key_file``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)

#: Socket-monitor events of a connection refused during the handshake (wrong or no key, ZAP denial).
HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "connection closed during the handshake (a client that "
                                                          "went away, a TCP probe, or a client without CURVE)",
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed (protocol: wrong or no CURVE key?)",
                    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "client key refused by the authenticator"}


def check_key_name(name: str) -> str:
    """A key pair's name: letters, digits, ``_``, ``.``, ``-`` (no path); ValueError otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"key name {name!r} must be letters, digits, '_', '.', '-'")
    return name


def make_keys(out_dir, name: str) -> Tuple[Path, Path]:
    """Write a new CURVE key pair ``out_dir/NAME.key`` (public) and ``NAME.key_secret``;
    returns their paths.  Refuses to overwrite an existing pair (``FileExistsError``)."""
    out = Path(out_dir)
    check_key_name(name)  # before anything is made
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if (out / (name + suffix)).exists():
            raise FileExistsError(f"{out / (name + suffix)} exists; remove it or choose another --name")
    public, secret = zmq.auth.create_certificates(str(out), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def public_key_hex(z85_key: bytes) -> str:
    """A Z85 public key (40 characters) as 64 hex digits: safe inside a ``server`` string's query."""
    return z85.decode(z85_key).hex()


def parse_public_key(text: str) -> bytes:
    """A public key given as 64 hex digits or 40 Z85 characters -> Z85 bytes (``ValueError`` otherwise)."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return z85.encode(bytes.fromhex(text))
    if len(text) == 40:
        try:
            if len(z85.decode(text.encode("ascii"))) == 32:
                return text.encode("ascii")
        except (ValueError, KeyError, UnicodeEncodeError, struct.error):  # struct: a 5-character group > 2**32
            pass
    hint = (" (a '+' of a Z85 key reads as a space in a server string: give the hex digits)"
            if " " in text else "")
    raise ValueError(f"server_key must be 64 hex digits or 40 Z85 characters (gdmcom keys prints both), "
                     f"got {len(text)} characters{hint}")


def _load(path, want_secret: bool) -> Tuple[bytes, Optional[bytes]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CURVE key file {p} not found (make one with `gdmcom keys --out DIR`)")
    public, secret = zmq.auth.load_certificate(str(p))
    if want_secret and not secret:
        raise ValueError(f"{p} holds no secret key: give the .key_secret file")
    return public, secret


def is_loopback(endpoint: str) -> bool:
    """True when ``endpoint`` is reachable from this host only (loopback TCP, ``ipc://``, ``inproc://``)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = urlsplit("//" + rest).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: assume reachable from outside


@dataclass
class CurveServer:
    """A server's CURVE settings.

    Attributes:
        secret_key_file: the server's ``NAME.key_secret`` (from ``gdmcom keys``).
        clients: a folder of accepted client public keys (``*.key``), or None with
            ``allow_any`` to accept any client key (encryption without client authentication).
        allow_any: accept every client key.
    """

    secret_key_file: str
    clients: Optional[str] = None
    allow_any: bool = False

    def __post_init__(self):
        if self.clients is not None and self.allow_any:
            raise ValueError("--curve-clients DIR and --curve-allow-any exclude each other: give the folder of "
                             "accepted client keys, or accept any key (encryption without authentication)")
        if self.clients is None and not self.allow_any:
            raise ValueError("a CURVE server needs either a folder of accepted client keys (--curve-clients DIR) "
                             "or --curve-allow-any")
        if self.clients is not None and not Path(self.clients).is_dir():
            raise FileNotFoundError(f"client key folder {self.clients} not found")
        self.public, self.secret = _load(self.secret_key_file, want_secret=True)
        self._auth: Optional[ThreadAuthenticator] = None

    @property
    def public_hex(self) -> str:
        return public_key_hex(self.public)

    def start(self, context: zmq.Context) -> None:
        """Run the ZAP authenticator on ``context`` (one per context, before any CURVE socket binds)."""
        auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
        auth.start()
        allowed = set() if self.allow_any else set(zmq.auth.load_certificates(self.clients))
        auth.configure_curve_callback(domain="*", credentials_provider=_KeyList(allowed, self.allow_any,
                                                                                 self.clients))
        self._auth = auth
        #: what ``status`` says of the server's security
        self.accepting = "any" if self.allow_any else len(allowed)
        log.info("CURVE: server key %s, accepting %s", self.public_hex,
                 "any client key" if self.allow_any else f"{len(allowed)} client key(s) from {self.clients}")
        if not self.allow_any and not allowed:
            log.warning("CURVE: no client keys (*.key) in %s: every client will be refused; copy the clients' "
                        "public .key files there (gdmcom keys makes them)", self.clients)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


class Throttle:
    """One warning per key, then at most one every ``every_s`` seconds: a misconfigured client
    retries several times a second, and each refusal would be a log line.  :meth:`due` says
    whether to warn now and how many were held back since the last warning."""

    def __init__(self, every_s: float = 30.0, max_keys: int = 1024):
        self.every_s, self.max_keys = float(every_s), int(max_keys)
        self._seen: dict = {}  # key -> (time of its last warning, occurrences held back since)

    def due(self, key) -> Optional[int]:
        """None: stay quiet; else warn now, the int being the occurrences held back since the last warning."""
        now, last = time.monotonic(), self._seen.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) >= self.max_keys:  # (a scan with random keys must not grow this without bound)
            self._seen.clear()
        self._seen[key] = (now, 0)
        return last[1] if last else 0


class _KeyList:
    """ZAP credentials provider: accept listed keys (or any); log each refusal with the key."""

    #: seconds between warnings about one refused key (its client retries several times a second)
    REPEAT_S = 30.0

    def __init__(self, allowed: set, allow_any: bool, where: Optional[str]):
        self.allowed, self.allow_any, self.where = allowed, allow_any, where
        self._throttle = Throttle(self.REPEAT_S)

    def callback(self, domain: str, key: bytes) -> bool:
        if self.allow_any or key in self.allowed:
            return True
        held = self._throttle.due(key)
        if held is not None:
            log.warning("refused client key %s: not among the accepted keys in %s%s",
                        key.decode("ascii", "replace"), self.where,
                        f" ({held} more refusals of it since the last warning)" if held else "")
        return False


@dataclass
class CurveClient:
    """A client's CURVE settings: the server's public key and this client's key pair (Z85 bytes)."""

    server_public: bytes
    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def client_from_options(server_key: Optional[str] = None, server_key_file: Optional[str] = None,
                        client_key_file: Optional[str] = None) -> Optional[CurveClient]:
    """The ``server`` string's CURVE options -> :class:`CurveClient` (None when no server key is given).

    Args:
        server_key: the server's public key, 64 hex digits or 40 Z85 characters.
        server_key_file: or the server's public key file (``NAME.key``).
        client_key_file: this client's ``NAME.key_secret``; without it an ephemeral key pair
            is made (accepted only by a server started with ``--curve-allow-any``).
    """
    # (an empty value is a value: `server_key=` with nothing after it must not mean "no CURVE")
    if server_key is not None and server_key_file is not None:
        raise ValueError("give server_key or server_key_file, not both")
    if server_key is None and server_key_file is None:
        if client_key_file is not None:
            raise ValueError("client_key_file needs the server's public key (server_key= or server_key_file=)")
        return None
    server_public = (parse_public_key(server_key) if server_key is not None
                     else _load(server_key_file, want_secret=False)[0])
    if client_key_file is not None:
        public, secret = _load(client_key_file, want_secret=True)
    else:
        public, secret = zmq.curve_keypair()
    return CurveClient(server_public, public, secret)
