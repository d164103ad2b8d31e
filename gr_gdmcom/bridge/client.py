"""Client of the inference server: :class:`RemoteBackend` (the Lazy Pirate pattern).

Each request gets a fresh id (UUID).  The client sends it on a DEALER socket
connected to every endpoint given (ZMQ spreads requests over the servers that
are connected; ``IMMEDIATE`` keeps requests off servers that are down) and
polls for the reply with a timeout.  On timeout it closes the socket, opens a
new one and sends the *same* request again (same id, same bytes): a server
that still has it attaches the retry to it or answers from its reply store,
a restarted or other server computes it.  Replies whose id is not the one
awaited are stale and dropped.  ``busy`` and ``unavailable`` (server
stopping; then on a new socket) replies are retried after the server's
``retry_after_ms`` (doubling, capped at 2 s).  After ``retries`` timeouts,
or ``(retries + 1) * timeout_ms`` in all (with several endpoints plus the status probes
after timeouts: :attr:`RemoteBackend.budget_ms`), the call raises :class:`BackendError`.

Sockets are per thread, so one client can serve several threads (two GNU
Radio blocks, a benchmark's workers) without a lock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import zmq

from ..codec import CodecError, Decoded, Encoded, ImageError, LatentMeta, load_rgb
from ..codec.core import _default_name, check_snr_db
from ..config import SERVER_FIELDS, CodecConfig
from . import protocol as P
from .backend import Backend, BackendError, check_setting_names
from .security import CurveClient

log = logging.getLogger(__name__)

#: Codec settings that the server applies and a client should agree with (the model is the server's
#: by definition; the seed seeds only a random-forward server's noise, the client's is its channel's)
SERVER_SIDE_FIELDS = tuple(f for f in SERVER_FIELDS if f not in ("model", "seed"))
#: Of those, what each op uses (a decode takes k, T, guidance, prompt and the reduction from the
#: image's metadata, but the server checks T against its own): a difference is a warning at the
#: first request of an op that uses it (a receiver is not warned about the transmitter's settings)
OP_FIELDS = {"encode": ("k", "T", "guidance", "prompt", "forward", "clean_end", "inversion", "inversion_iters",
                        "inversion_tol", "remove_mean", "reduce", "reduce_method"),
             "decode": ("m", "T", "rule", "rescale", "steps", "clean_end", "inversion", "inversion_iters",
                        "inversion_tol")}
MAX_BACKOFF_MS = 2000.0  # longest wait between busy/unavailable retries
#: after a request that no server answered, the next one first asks for ``status`` within this
#: long (ms, at most timeout_ms) and fails at once when that is not answered either
PROBE_MS = 3000
#: with several endpoints, how long a new socket waits for the connection to the server it tries
#: first (s; at most a quarter of timeout_ms) before it connects the others (_connect_order)
FIRST_CONNECT_S = 0.3
#: with several endpoints, after a timeout each is asked for ``status`` on its own socket (within
#: PROBE_MS); one that does not answer while another does is left out of new sockets this long (s)
SUSPECT_S = 60.0


def split_endpoints(endpoints: str) -> List[str]:
    """``"tcp://a:5555, tcp://b:5555"`` -> ``["tcp://a:5555", "tcp://b:5555"]`` (ValueError if none)."""
    eps = [e.strip() for e in str(endpoints).split(",") if e.strip()]
    if not eps:
        raise ValueError(f"no server endpoint in {endpoints!r}; give e.g. tcp://gpu-host:5555")
    for e in eps:
        if "://" not in e:
            raise ValueError(f"server endpoint {e!r} has no transport; write e.g. tcp://{e}")
        if e.startswith("tcp://"):  # ZMQ connects later and quietly: checked here, or a request waits it out
            why = _tcp_address_problem(_tcp_address(e))
            if why:
                raise ValueError(f"cannot use the server endpoint {e!r}: {why}; write tcp://HOST:PORT (or ipc://PATH)")
    return eps


def _tcp_address(endpoint: str) -> str:
    """``host:port`` of a ``tcp://[source;]host:port`` endpoint."""
    return endpoint[len("tcp://"):].rpartition(";")[2]


def _tcp_address_problem(address: str) -> Optional[str]:
    """What is wrong with a ``host:port`` to connect to (None: nothing ZMQ would wait out)."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return "no port"
    if not host.strip("[]"):
        return "no host"
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port must be 1..65535, got {port!r}"
    return None


def unresolved_hosts(endpoints: Sequence[str]) -> List[str]:
    """``"HOST (reason)"`` for each TCP endpoint whose host name does not resolve here -- why a
    request to it got no reply (ZMQ retries such a connection quietly)."""
    import socket

    out = []
    for e in endpoints:
        if e.startswith("tcp://"):
            host = _tcp_address(e).rpartition(":")[0].strip("[]")
            try:
                socket.getaddrinfo(host, None)
            except (OSError, UnicodeError) as exc:
                out.append(f"{host} ({getattr(exc, 'strerror', None) or exc})")
    return out


class RemoteBackend(Backend):
    """The model behind one or more ``gdmcom serve`` endpoints.

    Args:
        endpoints: one endpoint or several separated by commas, e.g.
            ``"tcp://gpu1:5555,tcp://gpu2:5555"`` (or a broker's frontend).
        config: the codec settings this side expects (None: the server's, no check).
            Those a request may carry (protocol ``settings``: encode ``k``; decode ``m``,
            ``steps``, ``rescale``) go with every request, so they apply whatever the
            server was started with; a difference in the others (the server's apply) is
            logged once as a warning, and again after the server's settings change (its
            replies' ``config_id``).
        timeout_ms: how long one attempt waits for its reply (ms), connecting included.
        retries: how many times a request is sent again after a timeout before
            :class:`BackendError`; ``busy`` / ``unavailable`` replies are retried
            with back-off for up to ``(retries + 1) * timeout_ms`` in all (:attr:`budget_ms`).
        image_format: ``raw`` (uint8 RGB, fastest on a LAN) or ``png`` (smaller)
            for decoded images on the wire; the result is the same.
        context: ZMQ context (default: a private one, termed by :meth:`close`).
        curve: :class:`~.security.CurveClient` (the server's public key and this client's
            key pair) for a server that speaks CURVE; None: plain TCP.
    """

    def __init__(self, endpoints: str, config: Optional[CodecConfig] = None, timeout_ms: int = 30000,
                 retries: int = 4, image_format: str = "raw", context: Optional[zmq.Context] = None,
                 curve: Optional[CurveClient] = None):
        if image_format not in P.IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(P.IMAGE_FORMATS)}, got {image_format!r}")
        if timeout_ms <= 0 or retries < 0:
            raise ValueError(f"timeout_ms must be > 0 and retries >= 0, got {timeout_ms}, {retries}")
        if "?" in str(endpoints):
            raise ValueError(f"RemoteBackend takes endpoints only, not {endpoints!r}: options after '?' (timeout_ms, "
                             f"retries, server_key, ...) are read by make_backend(server, config), as the blocks "
                             f"and the command line do; or pass them as arguments (curve=CurveClient(...))")
        self.endpoints = split_endpoints(endpoints)
        self.config = config
        self.curve = curve
        self.timeout_ms, self.retries, self.image_format = int(timeout_ms), int(retries), image_format
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._tls = threading.local()
        self._sockets: dict = {}  # socket -> the thread that owns it (ZMQ sockets are not thread-safe)
        self._lock = threading.Lock()
        self._closed = False
        self._checked = config is None
        self._check_lock = threading.Lock()
        #: per op, this side's settings the server takes per request: every request carries them
        self._carried: Dict[str, dict] = {}
        #: settings that differ from the server's and no request carries: name -> (server's, this side's)
        self._uncarried: Dict[str, tuple] = {}
        self._warned: set = set()  # of those, the names already warned about
        self._config_id: Optional[str] = None  # the server's settings when last read (its status config_id)
        self._config_ids: set = set()  # every config_id read; one seen again: servers of a list that differ
        self._mixed = False  # that was warned about
        self._max_request_bytes = 0  # the server's limit (from its status; 0: not known)
        self._rng = random.Random()
        #: requests, retries (re-sends), timeouts, busy, unavailable, stale (replies dropped for a wrong id),
        #: malformed (replies dropped that are not protocol messages)
        self.stats = dict(requests=0, retries=0, timeouts=0, busy=0, unavailable=0, stale=0, malformed=0)
        #: the last request got no reply from any server (cleared by the next reply): the next
        #: request probes first (:data:`PROBE_MS`) instead of spending the whole retry budget again
        self._down = False
        #: endpoint -> time.monotonic() until which new sockets leave it out (:meth:`_check_endpoints`)
        self._suspects: Dict[str, float] = {}

    # ------------------------------------------------------------------ Backend
    def encode(self, image, name: Optional[str] = None, settings: Optional[dict] = None) -> Encoded:
        """Encode an image remotely.

        Args:
            image: a path, encoded image bytes (PNG/JPEG ...), a uint8 array or a
                PIL image (arrays and PIL images travel as lossless PNG).
            name: label; default as the local codec (file stem, else ``image0``).
            settings: this request's own ``k`` (``{"k": 10}``; ``{}``: the server's); None:
                this side's configuration's (the server's with none).
        Returns:
            :class:`Encoded` (symbols complex64 (n,), unit mean energy; meta; record).
        Raises:
            ImageError: unreadable / missing / too large image; BackendError: no server.
        """
        data = _image_bytes(image)
        name = (name or _default_name(image, 0))[:P.MAX_NAME_CHARS]
        settings = self._settings("encode", settings)
        rid = uuid.uuid4().hex
        header, payloads = self._call("encode", rid, P.encode_request(rid, data, name, settings, self.budget_ms))
        self._note_config("encode", header)
        return P.encoded_from_reply(header, payloads)

    def decode(self, symbols: np.ndarray, meta: LatentMeta, snr_db: float,
               mask: Optional[np.ndarray] = None, settings: Optional[dict] = None) -> Decoded:
        """Decode received symbols remotely.

        Args:
            symbols: complex (n,) equalised symbols (sent as complex64).
            meta: the transmitter's :class:`LatentMeta`.
            snr_db: the receiver's Es/N0 estimate (dB).
            mask: bool (n,), False = erased symbol, or None.
            settings: this request's own ``m``, ``steps`` (a fixed N; None: the rule),
                ``rescale``, e.g. ``{"m": 0, "steps": 15, "rescale": False}`` (those not
                given: the server's); None: this side's configuration's (the server's with none).
        Returns:
            :class:`Decoded`: image uint8 (H, W, 3) and record (``n_steps`` ...,
            ``server``: queue_ms, codec_ms, batch).
        Raises:
            CodecError: input the server refused; BackendError: no server.
        """
        if not isinstance(meta, LatentMeta):
            raise CodecError(f"decode needs LatentMeta metadata, got {type(meta).__name__}")
        s = np.asarray(symbols)
        if s.ndim != 1 or not np.iscomplexobj(s):
            raise CodecError(f"{meta.name}: received symbols must be a 1-D complex array, got {s.dtype} {s.shape}")
        # the local codec's check and error, not a bad_request reply, which a client raises as BackendError:
        # a failed item, not a dead server
        check_snr_db(meta.name, snr_db)
        settings = self._settings("decode", settings)
        rid = uuid.uuid4().hex
        frames = P.decode_request(rid, s, meta, snr_db, mask, self.image_format, settings, self.budget_ms)
        header, payloads = self._call("decode", rid, frames)
        self._note_config("decode", header)
        return P.decoded_from_reply(header, payloads)

    @property
    def budget_ms(self) -> int:
        """How long a request is waited for in all, ``(retries + 1) * timeout_ms`` (with several
        endpoints, plus ``retries * min(timeout_ms, PROBE_MS)`` for the status probes after its
        timeouts): its ``deadline_ms`` (a server does not run a request still queued after that;
        the probes' time left out, a retry attached to the queued request was answered
        ``expired`` while its client still waited)."""
        probes = self.retries * min(self.timeout_ms, PROBE_MS) if len(self.endpoints) > 1 else 0
        return (self.retries + 1) * self.timeout_ms + probes

    def status(self) -> dict:
        """The server's ``status`` (model, device, queue depth, counters, uptime, version ...)."""
        rid = uuid.uuid4().hex
        header, _ = self._call("status", rid, P.status_request(rid))
        return header["status"]

    def close(self) -> None:
        """Close every socket of this client (call it when no request is in flight)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
        if self._own_ctx:
            self._ctx.term()

    def __repr__(self) -> str:
        return f"RemoteBackend({','.join(self.endpoints)!r}, timeout_ms={self.timeout_ms}, retries={self.retries})"

    # ------------------------------------------------------------------ Lazy Pirate
    def _socket(self) -> zmq.Socket:
        sock = getattr(self._tls, "sock", None)
        if sock is not None and self._closed:  # (a socket cached before close(): ZMQError "not a socket")
            raise BackendError("RemoteBackend is closed")
        if sock is not None and len(self.endpoints) > 1 and self._stale_socket():
            self._reset()
            sock = None
        if sock is None:
            with self._lock:
                if self._closed:
                    raise BackendError("RemoteBackend is closed")
                self._reap()
                sock = self._ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on completed connections: down servers get nothing
                if self.curve is not None:
                    self.curve.apply(sock)  # a server refusing the key never completes the connection: timeouts
                order = self._connect_order()
                self._connect(sock, order[0])  # the others after the first send (_attempt)
                self._sockets[sock] = threading.current_thread()
            self._tls.sock = sock
            self._tls.pending = order[1:]
            self._tls.order = order
        return sock

    @staticmethod
    def _connect(sock: zmq.Socket, ep: str) -> None:
        """Connect ``sock`` to ``ep``; ValueError (the socket closed) for an endpoint ZMQ refuses."""
        try:
            sock.connect(ep)
        except zmq.ZMQError as exc:  # (a socket left open here made close() wait forever)
            sock.close(linger=0)
            raise ValueError(f"cannot use the server endpoint {ep!r}: {exc.strerror}; write "
                             f"tcp://HOST:PORT (or ipc://PATH)") from None

    def _connect_order(self) -> List[str]:
        """The endpoints in the order a new socket of this thread connects them: rotated by one at
        each new socket, from a random start.  A fresh DEALER sends its first message to whichever
        connection completes first; connected all at once in list order, a retry after a timeout
        went back to the server that had not answered (a hung one, SIGSTOPped, or one whose model
        call never returns) about as often as not, and 4 retries failed with a live server listed.
        So a new socket connects the first of this order alone, sends its first request there when
        that connection completes within :data:`FIRST_CONNECT_S` (successive attempts go to
        successive servers), then connects the others (round robin from then on; a server that is
        down costs that wait, not the request)."""
        n = len(self.endpoints)
        self._tls.left_out = ()
        if n == 1:
            return list(self.endpoints)
        turn = getattr(self._tls, "turn", None)
        turn = self._rng.randrange(n) if turn is None else turn + 1
        self._tls.turn = turn
        k = turn % n
        order = self.endpoints[k:] + self.endpoints[:k]
        kept = [ep for ep in order if not self._suspect(ep)]  # (all left out: none is)
        if kept and len(kept) < n:
            self._tls.left_out = tuple(ep for ep in order if ep not in kept)
            return kept
        return order

    def _stale_socket(self) -> bool:
        """Whether this thread's socket should be connected anew: a server it left out has had
        its time, or one it connects is now left out (another thread's timeout found it silent)."""
        connected = [ep for ep in self._tls.order if self._suspect(ep)]
        return any(not self._suspect(ep) for ep in self._tls.left_out) or 0 < len(connected) < len(self._tls.order)

    def _suspect(self, ep: str) -> bool:
        until = self._suspects.get(ep)
        return until is not None and time.monotonic() < until

    def _status_each(self, wait_ms: int) -> dict:
        """Ask every endpoint for ``status`` on its own socket, all at once: ``{endpoint: status
        dict}`` of those that answered within ``wait_ms``, in the list's order (a DEALER connected
        to several servers cannot address one of them)."""
        socks: dict = {}
        answers: dict = {}
        try:
            for ep in self.endpoints:
                sock = self._ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                socks[sock] = ep
                if self.curve is not None:
                    self.curve.apply(sock)
                sock.connect(ep)
                sock.send_multipart([b""] + P.status_request(f"probe-{uuid.uuid4().hex}"), flags=zmq.NOBLOCK)
            poller = zmq.Poller()
            for sock in socks:
                poller.register(sock, zmq.POLLIN)
            deadline = time.monotonic() + wait_ms / 1000.0
            while len(answers) < len(socks):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for sock, _ in poller.poll(int(left * 1000) + 1):
                    msg = sock.recv_multipart()
                    poller.unregister(sock)
                    try:
                        header, _ = P.parse_reply(msg[1:] if msg and not msg[0] else msg)
                    except P.ProtocolError:
                        header = {}
                    answers[socks[sock]] = header.get("status") if isinstance(header.get("status"), dict) else {}
        finally:  # (a ZMQError, not expected: the endpoints were connected before, goes to the caller)
            for sock in socks:
                sock.close(linger=0)
        return {ep: answers[ep] for ep in self.endpoints if ep in answers}  # (in list order, not answer order)

    def _check_endpoints(self) -> None:
        """After a timeout with several endpoints: ask each for ``status`` on its own socket, all at
        once, within :data:`PROBE_MS`.  A DEALER connected to several servers does not say which
        one a request went to, so a hung server (up, never answering: SIGSTOPped, a stuck host)
        kept getting its share of the round robin -- about every other request cost a timeout.
        One that does not answer while another does is left out of new sockets for
        :data:`SUSPECT_S`; one that answers is trusted again."""
        wait_ms = min(self.timeout_ms, PROBE_MS)
        try:
            answered = self._status_each(wait_ms)
        except zmq.ZMQError as exc:
            log.debug("checking the endpoints failed: %s", exc)
            return
        silent = set(self.endpoints) - set(answered)
        with self._lock:
            for ep in self.endpoints:
                if ep not in silent:
                    self._suspects.pop(ep, None)
                elif len(silent) < len(self.endpoints) and not self._suspect(ep):
                    self._suspects[ep] = time.monotonic() + SUSPECT_S
                    log.warning("server %s did not answer a status request within %d ms after a timeout, while "
                                "another listed did: left out of new connections for %g s", ep, wait_ms, SUSPECT_S)

    def _reap(self) -> None:
        """Close the sockets of threads that have ended (caller holds the lock): a block's
        worker thread is new at every flowgraph start, and its socket must not outlive it."""
        for sock, owner in list(self._sockets.items()):
            if not owner.is_alive():
                sock.close(linger=0)
                del self._sockets[sock]

    @property
    def open_sockets(self) -> int:
        """How many sockets this client holds (one per thread that used it and is alive, at most)."""
        with self._lock:
            return len(self._sockets)

    def _reset(self) -> None:
        """Throw the socket away (its queued messages and late replies with it)."""
        sock = getattr(self._tls, "sock", None)
        self._tls.sock = None
        if sock is not None:
            with self._lock:
                self._sockets.pop(sock, None)
                sock.close(linger=0)

    def _bump(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _call(self, op: str, rid: str, frames: List[bytes]) -> Tuple[dict, List[bytes]]:
        """Send ``frames`` (request ``rid``) until a reply for ``rid`` comes back; map errors.

        A timeout costs one of ``retries``; ``busy`` / ``unavailable`` replies are
        retried after a back-off for as long as :attr:`budget_ms` allows; no attempt waits past it.
        """
        self._bump("requests")
        where = ",".join(self.endpoints)
        size = sum(len(f) for f in frames)
        if self._max_request_bytes and size > self._max_request_bytes:
            # the server drops a message over its limit unread: no reply, so every attempt would time out
            raise (ImageError if op == "encode" else CodecError)(
                f"{op} request of {size} bytes is over the server's limit of {self._max_request_bytes} bytes "
                f"(its status max_request_bytes; gdmcom serve --max-request-mb)")
        if self._down and not self._probe():
            raise BackendError(f"{op} request {rid} to {where} not sent: no server answered the last request, "
                               f"nor a status request now (within {min(self.timeout_ms, PROBE_MS)} ms). Is "
                               f"`gdmcom serve` running there? (the next request tries again)")
        deadline = time.monotonic() + self.budget_ms / 1000.0
        last, attempts, timeouts, backoffs = "no reply", 0, 0, 0
        while True:
            if attempts:
                self._bump("retries")
            attempts += 1
            # (never past the deadline_ms the server was told: it counts from its receipt, later than this)
            left_ms = int((deadline - time.monotonic()) * 1000)
            got = self._attempt(rid, [b""] + frames, min(self.timeout_ms, left_ms)) if left_ms > 0 else None
            if got is None:
                self._bump("timeouts")
                timeouts += 1
                last = f"no reply within {self.timeout_ms} ms"
                log.warning("%s request %s to %s: %s (timeout %d of %d)", op, rid, where, last, timeouts,
                            self.retries + 1)
                self._reset()
                if len(self.endpoints) > 1 and timeouts <= self.retries:
                    self._check_endpoints()
                if timeouts > self.retries or time.monotonic() >= deadline:
                    timeouts = self.retries + 1
                    break
                continue
            header, payloads = got
            self._down = False
            code = header.get("code")
            if header.get("ok"):
                return header, payloads
            if code not in P.RETRYABLE:
                raise _error(op, where, header)
            self._bump(code)
            last = f"server answered {code}: {header.get('message')}"
            if code == P.UNAVAILABLE:
                self._reset()  # that server is going away: a new socket may reach another one
            delay = min(MAX_BACKOFF_MS, float(header.get("retry_after_ms") or 100) * 2 ** backoffs) / 1000.0
            delay *= self._rng.uniform(0.5, 1.0)
            backoffs += 1
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        if timeouts > self.retries:  # no reply at all: the next request probes before it waits as long
            self._down = True
        hint = ("Is `gdmcom serve` running there?" if last.startswith("no reply") else
                "The server is up but stayed busy or was stopping for the whole retry budget: retry later, or "
                "give more (?timeout_ms=...&retries=...)")
        raise BackendError(f"{op} request {rid} to {where} failed after {attempts} attempt{'s' * (attempts > 1)} "
                           f"(timeout {self.timeout_ms} ms each): {last}. {hint}")

    def _probe(self) -> bool:
        """One ``status`` round trip within :data:`PROBE_MS`: whether a server answers now."""
        rid = uuid.uuid4().hex
        got = self._attempt(rid, [b""] + P.status_request(rid), min(self.timeout_ms, PROBE_MS))
        if got is None:
            self._reset()
            return False
        self._down = False
        return True

    def _attempt(self, rid: str, frames: List[bytes],
                 timeout_ms: Optional[int] = None) -> Optional[Tuple[dict, List[bytes]]]:
        """One send and wait (``timeout_ms``, default the client's); None on timeout.  Stale or
        malformed replies are skipped."""
        sock = self._socket()
        deadline = time.monotonic() + (self.timeout_ms if timeout_ms is None else timeout_ms) / 1000.0
        pending, sent = getattr(self._tls, "pending", None), False
        if pending:  # a new socket connected to one endpoint so far (_connect_order)
            self._tls.pending = []
            wait = min(FIRST_CONNECT_S, self.timeout_ms / 4000.0)
            if sock.poll(int(wait * 1000) + 1, zmq.POLLOUT):
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    sent = True
                except zmq.Again:
                    pass
            for ep in pending:
                try:
                    self._connect(sock, ep)
                except ValueError:
                    self._reset()
                    raise
        while not sent:  # IMMEDIATE: sending needs a completed connection
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLOUT):
                    return None
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                return None
            msg = [f.buffer for f in sock.recv_multipart(copy=False)]  # no copy of large payloads
            if msg and len(msg[0]) == 0:
                msg = msg[1:]  # the delimiter
            try:
                header, payloads = P.parse_reply(msg)
            except P.ProtocolError as exc:
                self._bump("malformed")
                log.warning("malformed reply dropped: %s", exc)
                continue
            if header.get("id") != rid:
                self._bump("stale")
                log.debug("stale reply for %s dropped while waiting for %s", header.get("id"), rid)
                continue
            return header, payloads

    def _settings(self, op: str, settings: Optional[dict]) -> Optional[dict]:
        """What a request carries: the caller's ``settings``, else this side's own that the
        server takes per request (read from its ``status``)."""
        if settings:  # refused here in LocalBackend's words (the server's bad_request was a BackendError)
            try:
                check_setting_names(op, settings)
            except ValueError as exc:
                raise CodecError(f"settings: {exc}") from None
        self._check_config()
        self._warn_uncarried(op)
        return settings if settings is not None else (self._carried.get(op) or None)

    def _warn_uncarried(self, op: str) -> None:
        """A warning for each setting ``op`` uses that differs from the server's and no request
        can carry (the server's applies), once per setting."""
        todo = [k for k in OP_FIELDS.get(op, ()) if k in self._uncarried and k not in self._warned]
        if not todo:
            return
        with self._check_lock:
            where = ",".join(self.endpoints)
            for key in todo:
                if key not in self._warned:
                    self._warned.add(key)
                    theirs, mine = self._uncarried[key]
                    log.warning("server %s uses %s=%r but this side's configuration says %r; the server's applies",
                                where, key, theirs, mine)

    def _check_config(self) -> None:
        """Once, before the first encode/decode (and again when the server's settings change:
        :meth:`_note_config`): compare this client's configuration with the server's.  Settings
        a request may carry (protocol ``settings``: k; m, steps, rescale) go with every request
        (a difference is logged); others that differ are warnings (the server's apply) at the
        first request of an op that uses them (:data:`OP_FIELDS`).  A server that does not
        answer raises :class:`BackendError` (the request would fail too), and the check is tried
        again with the next request."""
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            try:
                st = self.status()
            except ValueError as exc:
                log.warning("cannot read the server's settings: %s", exc)
                self._checked = True
                return
            server_cfg, taken = st.get("config", {}) or {}, st.get("settings") or {}
            if isinstance(st.get("max_request_bytes"), int):
                self._max_request_bytes = st["max_request_bytes"]
            mine = {f.name: getattr(self.config, f.name) for f in fields(self.config)}
            where = ",".join(self.endpoints)
            self._config_id = st.get("config_id")
            self._config_ids.add(self._config_id)
            # (new dicts, assigned whole: a request reads them without the lock)
            self._carried = {op: {key: mine[key] for key in names if key in mine} for op, names in taken.items()}
            uncarried = {}
            if st.get("model") is not None and st.get("model") != self.config.model:
                log.warning("server %s runs model %r, not this side's %r: the server's model encodes and decodes "
                            "(the other end of the link must use it too; frame headers carry its fingerprint)",
                            where, st.get("model"), self.config.model)
            for key in SERVER_SIDE_FIELDS:
                if key not in server_cfg or server_cfg[key] == mine[key]:
                    continue
                ops = [op for op, names in taken.items() if key in names]
                if ops:
                    log.info("server %s runs %s=%r; this side's %r goes with each %s request", where, key,
                             server_cfg[key], mine[key], "/".join(ops))
                else:
                    uncarried[key] = (server_cfg[key], mine[key])
            self._uncarried = uncarried
            self._checked = True

    def _note_config(self, op: str, header: dict) -> None:
        """After a reply: a ``config_id`` other than the one read with the settings means the
        server now runs other settings (restarted with other options, or another server of the
        list): read them again now, so that the warnings about differences that no request
        carries come with this reply, not never."""
        cid = header.get("config_id")
        if self.config is None or not isinstance(cid, str) or cid == self._config_id or self._config_id is None:
            return
        with self._check_lock:
            if cid == self._config_id:
                return  # another thread read them
            if cid in self._config_ids:  # back to settings seen before: servers of the list differ
                self._warn_mixed(self._config_id, cid)
                self._config_id = cid
                return
            # (noted now: a status re-read that another server answers does not make it new again,
            # which made every reply of the other server cost a status round trip)
            self._config_ids.add(cid)
            log.info("server %s now runs other settings (config_id %s, was %s: restarted?); reading them again",
                     ",".join(self.endpoints), cid, self._config_id)
            was, warned = self._config_id, self._warned
            self._checked, self._warned = False, set()
        try:
            self._check_config()
        except BackendError as exc:  # this reply stands; the next request reads them
            log.warning("cannot read the server's new settings: %s", exc)
            return
        with self._check_lock:
            if self._config_id != cid:  # the status came from another server (of the list, or behind a broker)
                if self._config_id == was:  # the one read before: its warnings were given
                    self._warned |= warned
                self._warn_mixed(self._config_id, cid)
                self._config_id = cid
                return
        self._warn_uncarried(op)

    def _warn_mixed(self, one: Optional[str], other: str) -> None:
        """Once: replies come from servers with different settings (caller holds the check lock).
        With several endpoints, each is asked for its settings on its own socket, and the warning
        names which server runs what (behind one endpoint, a broker, that cannot be asked)."""
        if self._mixed:
            return
        self._mixed = True
        which = ""
        if len(self.endpoints) > 1:
            try:
                which = _differences(self._status_each(min(self.timeout_ms, PROBE_MS)))
            except zmq.ZMQError:
                pass
        log.warning("replies from %s come from servers with different settings (config_id %s and %s; or a "
                    "server restarted back to settings it had before)%s: what no request carries is each "
                    "server's own", ",".join(self.endpoints), one, other, which)


def _differences(answers: dict) -> str:
    """``"; tcp://a: guidance=6.0, tcp://b: guidance=2.0"``: the settings (model, request limit,
    the server-side codec settings) in which the servers that answered ``status`` differ, or ''."""
    seen = {ep: {"model": st.get("model"), "max_request_bytes": st.get("max_request_bytes"),
                 **{k: (st.get("config") or {}).get(k) for k in SERVER_SIDE_FIELDS}}
            for ep, st in answers.items() if st}
    if len(seen) < 2:
        return ""
    keys = [k for k in next(iter(seen.values())) if len({repr(v[k]) for v in seen.values()}) > 1]
    if not keys:
        return ""
    return "; " + ", ".join(f"{ep}: " + " ".join(f"{k}={v[k]!r}" for k in keys) for ep, v in seen.items())


def _image_bytes(image) -> bytes:
    """What travels in an encode request: file bytes as they are; arrays and PIL
    images as lossless PNG of their RGB conversion (the same pixels the codec sees)."""
    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.exists():
            raise ImageError(f"image not found: {p}")
        if p.is_dir():
            raise ImageError(f"image path is a folder, not a file: {p}")
        return p.read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return P.image_to_bytes(np.asarray(load_rgb(image)), "png", png_level=1)


def _error(op: str, where: str, header: dict) -> Exception:
    """Error reply -> the exception a :class:`LocalBackend` would raise (ValueError kinds for
    bad input, :class:`BackendError` for protocol or server failures)."""
    code, message = header.get("code"), header.get("message", "")
    if op == "encode" and code in (P.BAD_IMAGE, P.TOO_LARGE):
        return ImageError(message)
    if code in (P.SIZE_MISMATCH, P.NON_FINITE, P.TOO_LARGE, P.MISSING_META, P.BAD_META, P.REJECTED, P.BAD_IMAGE):
        return CodecError(message)
    return BackendError(f"server {where} answered {code}: {message}")


__all__: Sequence[str] = ["RemoteBackend", "split_endpoints", "unresolved_hosts", "SERVER_SIDE_FIELDS"]
