"""The inference server: one loaded model behind a ZMQ ROUTER socket (``gdmcom serve``).

Two threads::

    clients --ROUTER--> [I/O thread] --validate--> bounded queue --> [worker thread]
                             ^   (status, errors, busy answered here)       |
                             +------------- reply queue + wake-up pipe <----+
                                                                codec.encode_many / decode_many

* The **I/O thread** owns the socket.  It validates every request completely
  (:func:`protocol.parse_request`), answers ``status``, protocol errors and
  ``busy`` (queue full) at once, and forwards the worker's replies.  It also
  keeps the request-id bookkeeping: a retry of a request that is queued or
  being computed is attached to it (the reply goes to the latest sender), and
  a retry of a request answered in the last ``reply_ttl_s`` seconds gets the
  stored reply; neither computes twice.
* The **worker thread** takes the first queued request and the queued ones
  of the same op, up to ``max_batch`` (requests of the other op met on the
  way are set aside, up to ``max_batch`` of them, and start the next batch);
  when more than one client has been active in the last ``PEER_WINDOW_S``
  seconds it waits at most ``max_wait_ms`` (counted from the first request's
  arrival) for the batch to fill (a lone client waiting for each reply cannot
  add to its own batch, so it never waits).  The batch is one ``encode_many`` /
  ``decode_many`` call (one UNet call per step for the whole batch); when that call
  raises, the batch is retried in halves (:func:`split_on_failure`), so only the
  requests whose own call fails are answered ``internal``.

Memory is bounded: at most ``max_queue + 2 max_batch + 1`` requests of at most
``max_request_bytes`` each are held, plus the reply store
(``reply_cache_bytes``).  ``docs/server.md`` has the operations side.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Deque, Iterator, List, Optional, Tuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import __version__
from ..codec import Failed
from ..codec.stepper import StepScheduler, drive, release_cuda_cache
from . import protocol as P
from ..config import CodecConfig
from .backend import REQUEST_SETTINGS, CodecVariants, codec_lock, request_config
from .metrics import ServerMetrics
from .security import HANDSHAKE_FAILED, CurveServer, Throttle, is_loopback

log = logging.getLogger(__name__)

#: Counters reported by ``status`` (all start at 0).
UNAVAILABLE_RETRY_MS = 200  # suggested wait after an ``unavailable`` reply
PEER_WINDOW_S = 2.0  # a client counts as active this long after its last request
#: seconds between warnings about connections refused in the CURVE handshake
REFUSED_LOG_S = 30.0
COUNTERS = ("received", "requests", "served", "failed", "rejected", "busy", "unavailable", "expired", "dropped",
            "duplicates", "batches", "model_calls", "batch_retries", "refused")
SCHEDULING = ("batch", "step")


@dataclass
class _Job:
    """One accepted encode/decode request on its way through the server."""

    req: P.Request
    envelope: List[bytes]
    fp: int  # fingerprint of the request bytes (a retry must match)
    t_recv: float  # time.monotonic() at arrival
    config: Optional[CodecConfig] = None  # the request's own codec settings applied (None: the server's)
    peer: str = "?"  # the client's address (TCP), for the log
    expires: Optional[float] = None  # time.monotonic() after which its client no longer waits (deadline_ms)

    @property
    def id(self) -> str:
        return self.req.id


class _JobQueue(queue.Queue):
    """The accepted requests, in order.  A job whose client stopped waiting (its ``deadline_ms``
    passed in the queue) is not handed to a worker: ``expired(job)`` gets it instead, so that a
    client that went away (a flowgraph stopped with a backlog, a timed-out client) costs no model
    time -- every loop (batch, step, a Ray gateway's) takes its jobs through ``get``."""

    def __init__(self, maxsize: int, expired: Callable[[Any], None]):
        super().__init__(maxsize)
        self._expired = expired

    def get(self, block: bool = True, timeout: Optional[float] = None):
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            job = super().get(block, None if end is None else max(0.0, end - time.monotonic()))
            if job.expires is None or time.monotonic() < job.expires:
                return job
            self._expired(job)


def _peer(frame) -> str:
    """The client's address of a received frame (``ip:port`` over TCP; ``?`` where ZMQ has none)."""
    try:
        return frame.get("Peer-Address") or "?"
    except (zmq.ZMQError, AttributeError):
        return "?"


@dataclass
class _Stored:
    fp: int
    frames: List[bytes]
    nbytes: int
    expires: float


@dataclass
class ServerOptions:
    """Tuning of :class:`InferenceServer` (``gdmcom serve`` flags of the same names).

    Attributes:
        max_batch: most requests run as one codec call.
        max_wait_ms: longest a request waits (ms, from its arrival) for others to batch with;
            spent only while more than one client is active.
        max_queue: requests waiting for the worker; beyond it the server answers ``busy``.
        max_request_bytes: largest request accepted (all frames, bytes).
        png_level: zlib level of PNG replies (0 = fastest, 9 = smallest).
        reply_cache_bytes: replies kept for retries whose first reply was lost (bytes).
        reply_ttl_s: how long such a reply is kept (s).
        drain_timeout_s: on stop, how long to wait for the batch in progress (s).
        scheduling: ``batch`` (a batch runs to completion) or ``step`` (step-level: requests
            join and leave the batched UNet call at every step).
    """

    max_batch: int = 4
    max_wait_ms: float = 10.0
    max_queue: int = 32
    max_request_bytes: int = 64 << 20
    png_level: int = 1
    reply_cache_bytes: int = 16 << 20
    reply_ttl_s: float = 60.0
    drain_timeout_s: float = 30.0
    scheduling: str = "batch"

    def validate(self) -> "ServerOptions":
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {self.max_batch}, {self.max_queue}")
        if self.max_wait_ms < 0 or self.max_request_bytes < 1024:
            raise ValueError(f"max_wait_ms must be >= 0 and max_request_bytes >= 1024, got "
                             f"{self.max_wait_ms}, {self.max_request_bytes}")
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"png_level must be in 0..9, got {self.png_level}")
        if self.scheduling not in SCHEDULING:
            raise ValueError(f"scheduling must be one of {', '.join(SCHEDULING)}, got {self.scheduling!r}")
        return self


def gather_batch(first, held: Deque, jobs: "queue.Queue", max_batch: int, deadline: float,
                 op_of: Callable[[Any], str]) -> Tuple[list, Deque]:
    """The batch that starts with ``first`` (the worker is free now): jobs of its op set aside
    earlier (``held``, oldest first), then queued ones until ``max_batch`` or ``deadline``
    (``time.monotonic()``; past: only what is queued already).  A job of the other op is set aside
    for the next batch rather than ending this one, at most ``max_batch`` of them (which bounds
    what is held outside the queue): with encodes and decodes interleaved (transmitters and
    receivers on one server) batches stay full.  Returns ``(batch, held)``."""
    op = op_of(first)
    batch, other = [first], collections.deque()
    while held:
        job = held.popleft()
        (batch if op_of(job) == op and len(batch) < max_batch else other).append(job)
    held = other
    while len(batch) < max_batch and len(held) < max_batch:
        remaining = deadline - time.monotonic()
        try:
            job = jobs.get(timeout=remaining) if remaining > 0 else jobs.get_nowait()
        except queue.Empty:
            break
        (batch if op_of(job) == op else held).append(job)
    return batch, held


def split_on_failure(items: list, run: Callable[[list], list], what: str,
                     retried: Callable[[], None] = lambda: None, first: bool = True) -> Iterator[Tuple[Any, Any]]:
    """``run(items)`` -> one result per item, yielded as ``(item, result)``.  When it raises over
    more than one item, each half is run again (recursively): only an item whose own call raises
    comes out as ``(item, exception)``; the others get what they would have had in a clean run
    (the codec is deterministic per request).  Before each retry ``retried()`` is called and, after
    a CUDA out-of-memory error, the cache is freed.  At most ``2 len(items) - 1`` calls in all."""
    try:
        results = run(items)
    except Exception as exc:  # noqa: BLE001 - a failure of the model call: answered per item
        retry = "; retrying it in halves" if len(items) > 1 else ""
        if first:
            log.exception("%s of %d failed%s", what, len(items), retry)
        else:
            log.warning("%s of %d failed again (%s: %s)%s", what, len(items), type(exc).__name__, exc, retry)
        if not retry:
            yield items[0], exc
            return
        release_cuda_cache(exc)
        retried()
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            yield from split_on_failure(part, run, what, retried, first=False)
        return
    yield from zip(items, results)


class InferenceServer:
    """Serve one codec over ZMQ (protocol v1, ``docs/protocol.md``).

    Args:
        codec: a built :class:`~gr_gdmcom.codec.GenerativeCodec` (shared with
            other servers / backends in the process through :func:`codec_lock`).
        bind: endpoint to bind, e.g. ``tcp://0.0.0.0:5555`` or ``tcp://127.0.0.1:0``
            (any free port; read it back from :attr:`last_endpoint`).
        connect: instead of binding, connect to a broker's backend endpoint.
        options: :class:`ServerOptions`; keyword arguments override its fields.
        context: a ZMQ context to use (default: a private one, termed by :meth:`stop`).
        curve: :class:`~.security.CurveServer` keys: CURVE encryption, and only accepted client
            keys get through (the ZAP authenticator runs on ``context``: one CURVE server per
            context).  None: plain TCP, with a warning when bound to a non-loopback address.

    Use ``start()`` / ``stop()``, or ``with InferenceServer(...) as srv:``; a
    stopped server cannot start again.
    """

    def __init__(self, codec, bind: Optional[str] = "tcp://127.0.0.1:0", *, connect: Optional[str] = None,
                 options: Optional[ServerOptions] = None, context: Optional[zmq.Context] = None,
                 curve: Optional[CurveServer] = None, **overrides):
        if not (bind or connect):
            raise ValueError("give an endpoint to bind= or connect=")
        self.codec = codec
        self.options = dataclasses.replace(options or ServerOptions(), **overrides).validate()
        self.limits = self._make_limits()
        self._bind, self._connect = (None, connect) if connect else (bind, None)
        self._own_ctx = context is None
        self._ctx = context
        self._sock: Optional[zmq.Socket] = None
        self._monitor: Optional[zmq.Socket] = None
        self.curve = curve
        self._lock = codec_lock(codec) if codec is not None else None
        self._variants = CodecVariants(codec) if codec is not None else None
        self._queue: "queue.Queue[_Job]" = _JobQueue(self.options.max_queue, self._expire)
        self._replies: "queue.Queue[Tuple[_Job, List[bytes], str]]" = queue.Queue()
        self._inflight: dict = {}
        self._store: "collections.OrderedDict[str, _Stored]" = collections.OrderedDict()
        self._store_bytes = 0
        self._stopping = threading.Event()
        self._drain_s = self.options.drain_timeout_s
        self._io: Optional[threading.Thread] = None
        self._worker: Optional[threading.Thread] = None
        self._wake_r = self._wake_w = -1
        self._batch_ms = 100.0  # running estimate of one batch's duration, for retry_after_ms
        self._peers: dict = {}  # envelope -> time of its last request (I/O thread only)
        self._active_peers = 0  # len(self._peers) after pruning, read by the worker
        self._refused_log = Throttle(REFUSED_LOG_S)  # handshake refusals, per reason
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.metrics = ServerMetrics(self.counters, lambda: dict(queue_depth=self._queue.qsize(),
                                                                 inflight=len(self._inflight)))
        #: ids of the requests this server computed successfully, newest last (bounded).
        self.served_ids: Deque[str] = collections.deque(maxlen=4096)
        self.last_endpoint = ""
        self.t_start = time.time()
        self._config_id: Optional[str] = None  # P.config_id of this server's status, once known

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "InferenceServer":
        """Bind (or connect) and start the threads; returns self."""
        if self._io is not None or self._stopping.is_set():
            raise RuntimeError("server already started (a stopped server cannot start again: make a new one)")
        if self._ctx is None:
            self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        if self.curve is not None:
            self.curve.start(self._ctx)
            self.curve.apply(sock)
            self._monitor = sock.get_monitor_socket(sum(HANDSHAKE_FAILED))
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a gone client raises instead of vanishing
        sock.setsockopt(zmq.LINGER, 1000)  # last replies still leave when stopping
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        # hard guard against absurd frames: the peer is disconnected, no reply (P.TOO_LARGE answers below it).
        # Bound only: connected to a broker, the one connection carries every client's requests, and
        # ZeroMQ closing it for one client's frame cut all of them off for good (it is not reopened);
        # there the frame is read and answered too_large (Broker(max_message_bytes=) guards the broker)
        if self._bind:
            sock.setsockopt(zmq.MAXMSGSIZE, self.options.max_request_bytes + self.limits.max_header_bytes)
        try:
            if self._bind:
                sock.bind(self._bind)
            else:
                sock.connect(self._connect)
        except zmq.ZMQError as exc:
            self._close_monitor(sock)
            sock.close(0)
            self._close_ctx()
            where = f"bind {self._bind}" if self._bind else f"connect {self._connect}"
            raise OSError(f"cannot {where}: {exc}") from None
        self._sock = sock
        self.last_endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode() if self._bind else self._connect
        if self.curve is None and not is_loopback(self.last_endpoint):
            log.warning("serving plain TCP (no encryption, no authentication) on %s, reachable from other hosts: "
                        "use CURVE keys (gdmcom keys; gdmcom serve --curve-secret-key ...) or bind 127.0.0.1",
                        self.last_endpoint)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.t_start = time.time()
        loop = self._step_loop if self.options.scheduling == "step" else self._worker_loop
        self._worker = threading.Thread(target=loop, name="gdmcom-worker", daemon=True)
        self._io = threading.Thread(target=self._io_loop, name="gdmcom-io", daemon=True)
        self._worker.start()
        self._io.start()
        log.info("serving %s at %s (%s scheduling, max_batch=%d, max_wait_ms=%g, max_queue=%d)", self._describe(),
                 self.last_endpoint, self.options.scheduling, self.options.max_batch, self.options.max_wait_ms,
                 self.options.max_queue)
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop: finish (and deliver) the batch in progress, answer queued and new
        requests ``unavailable``, close the socket, term a private context.

        Args:
            timeout: longest wait for the batch in progress (s); default ``drain_timeout_s``.
        """
        if self._io is None:
            return
        self._drain_s = self.options.drain_timeout_s if timeout is None else float(timeout)
        self._stopping.set()
        self._wake()
        self._io.join()
        self._io = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        self._close_ctx()
        self.metrics.close()
        log.info("server at %s stopped: %s", self.last_endpoint, self.counters)

    def _close_monitor(self, sock: zmq.Socket) -> None:
        if self._monitor is not None:
            sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def _close_ctx(self) -> None:
        if self.curve is not None:
            self.curve.stop()
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def serve_forever(self) -> None:
        """Start if needed and block until :meth:`stop` is called from another thread
        (or a signal handler)."""
        if self._io is None:
            self.start()
        while self._io is not None and self._io.is_alive():
            self._io.join(0.5)

    def __enter__(self) -> "InferenceServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._io is not None and not self._stopping.is_set()

    # ------------------------------------------------------------------ status
    def _make_limits(self) -> P.Limits:
        """What requests may hold (checked by the I/O thread): from the codec."""
        return P.Limits.for_codec(self.codec, max_request_bytes=self.options.max_request_bytes)

    def _describe(self) -> str:
        return f"{self.codec.config.model} on {self.codec.c.device}"

    def _codec_config(self) -> CodecConfig:
        """The server's own codec configuration (requests' ``settings`` change it per request)."""
        return self.codec.config

    def _engine_status(self) -> dict:
        """The model side of ``status``: model, device, dtype, codec counters, config."""
        cfg = self.codec.config
        return dict(model=cfg.model, model_hash=self.codec.model_hash, device=str(self.codec.c.device),
                    dtype=str(self.codec.c.dtype).replace("torch.", ""), codec=dict(self.codec.stats),
                    config=asdict(cfg), speed=dict(getattr(self.codec.c, "speed", {})))

    def status(self) -> dict:
        """What ``status`` answers: model, device, queue, counters, uptime, version."""
        engine = self._engine_status()
        st = dict(
            version=__version__, protocol=P.VERSION, model=engine.pop("model"), model_hash=engine.pop("model_hash"),
            device=engine.pop("device"),
            dtype=engine.pop("dtype"), host=socket.gethostname(), pid=os.getpid(),
            endpoint=self.last_endpoint, uptime_s=round(time.time() - self.t_start, 3),
            queue_depth=self._queue.qsize(), max_queue=self.options.max_queue, max_batch=self.options.max_batch,
            max_wait_ms=self.options.max_wait_ms, scheduling=self.options.scheduling,
            active_clients=self._active_peers,
            max_request_bytes=self.options.max_request_bytes,
            security=dict(curve=self.curve is not None, client_keys=getattr(self.curve, "accepting", None)),
            settings={op: list(v) for op, v in REQUEST_SETTINGS.items()},
            latent_channels=self.limits.latent_channels,
            inflight=len(self._inflight), reply_store=dict(entries=len(self._store), bytes=self._store_bytes),
            **engine, **self.counters)
        if self._config_id is None:  # fixed for the server's life: computed once
            self._config_id = P.config_id(st)
        st["config_id"] = self._config_id
        return st

    # ------------------------------------------------------------------ I/O thread
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # a wake-up is already pending (BlockingIOError), or we are closing

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                events = dict(poller.poll(200))
                if self._wake_r in events:
                    self._flush_replies()
                if self._sock in events:
                    self._read_requests(accept=True)
                if self._monitor in events:
                    self._read_monitor()
                self._expire_store()
            # stopping: queued requests are answered unavailable now (not after the batch in progress,
            # which may take seconds); deliver that batch, keep answering (status / unavailable)
            self._refuse_queued()
            deadline = time.monotonic() + self._drain_s
            while self._worker.is_alive() and time.monotonic() < deadline:
                events = dict(poller.poll(50))
                if self._wake_r in events:
                    self._flush_replies()
                if self._sock in events:
                    self._read_requests(accept=False)
            if self._worker.is_alive():
                log.warning("worker still busy after %.1f s; closing anyway", self._drain_s)
            self._flush_replies()
            self._refuse_queued()
        except Exception:  # pragma: no cover - a bug; keep the traceback and close
            log.exception("I/O thread failed")
            self._stopping.set()
        finally:
            self._close_monitor(self._sock)
            self._sock.close(linger=1000)
            self._sock = None

    def _refuse_queued(self) -> None:
        """Answer every request still in the queue ``unavailable`` (the server is stopping)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            self._send_job_reply(job, self._unavailable(job.req), "unavailable")

    def _read_monitor(self) -> None:
        """Log and count connections refused in the CURVE handshake (the client gets no reply)."""
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            what = HANDSHAKE_FAILED.get(event["event"])
            # (NO_DETAIL, a connection closed mid-handshake, is counted too: most are clients that went
            # away or TCP probes, but a client without CURVE can end that way as well, and went unseen)
            if what is not None:
                self.counters["refused"] += 1
                held = self._refused_log.due(what)  # one warning per reason, then one per REFUSED_LOG_S
                if held is not None:
                    log.warning("refused a connection on %s: %s (code %s)%s; a client with the wrong keys, or one "
                                "without CURVE (status counts them: refused)", self.last_endpoint, what,
                                event["value"], f" ({held} more refused since the last warning)" if held else "")
                else:
                    log.debug("refused a connection on %s: %s", self.last_endpoint, what)

    def _read_requests(self, accept: bool) -> None:
        for _ in range(64):  # then look at replies again
            try:
                raw = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.counters["received"] += 1
            envelope, body = P.split_envelope([f.bytes for f in raw])
            try:
                self._on_request(envelope, body, accept, _peer(raw[-1]))
            except Exception as exc:  # pragma: no cover - a bug in validation; answer and go on
                log.exception("request handling failed")
                self._send(envelope, P.error_reply(None, None, P.INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _on_request(self, envelope: List[bytes], body: List[bytes], accept: bool, peer: str = "?") -> None:
        try:
            req = P.parse_request(body, self.limits)
        except P.ProtocolError as exc:
            self.counters["rejected"] += 1
            log.info("rejected request %s from %s: %s: %s", exc.rid, peer, exc.code, exc.message)
            self._send(envelope, P.error_reply(exc.rid, exc.op, exc.code, exc.message))
            return
        if req.op == "status":
            self._send(envelope, P.reply(req.id, "status", status=self.status()))
            return
        config = None
        if req.settings:
            try:
                base = self._codec_config()
                config = request_config(base, req.op, req.settings, req.meta.k if req.meta is not None else None)
                if config is base:  # the server's own settings: batched with requests carrying none
                    config = None
            except ValueError as exc:
                self.counters["rejected"] += 1
                log.info("rejected request %s from %s: settings %s: %s", req.id, peer, req.settings, exc)
                self._send(envelope, P.error_reply(req.id, req.op, P.REJECTED, f"settings: {exc}"))
                return
        fp = P.fingerprint(body)
        # before the stopping server's `unavailable`: a retry of the request in the batch being
        # finished is attached to it (it was answered unavailable, and the reply then went to the
        # socket the client had closed at its timeout: dropped, computed again elsewhere)
        known = self._inflight.get(req.id) or self._store.get(req.id)
        if known is None and not accept:
            self.counters["unavailable"] += 1
            self._send(envelope, self._unavailable(req))
            return
        if known is not None:
            if known.fp != fp:
                self.counters["rejected"] += 1
                self._send(envelope, P.error_reply(req.id, req.op, P.BAD_REQUEST,
                                                   f"id {req.id} was already used for a different request"))
                return
            self.counters["duplicates"] += 1
            if isinstance(known, _Job):  # queued or being computed: the reply goes to the latest sender
                known.envelope = envelope
            else:
                self._send(envelope, known.frames)
            log.debug("duplicate of request %s", req.id)
            return
        t = time.monotonic()
        job = _Job(req, envelope, fp, t, config, peer, None if req.deadline_ms is None else t + req.deadline_ms / 1e3)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.counters["busy"] += 1
            retry_ms = int(max(10.0, self._batch_ms))
            log.info("busy: %s %s from %s refused, the queue is full (%d); retry after %d ms", req.op, req.id, peer,
                     self.options.max_queue, retry_ms)
            self._send(envelope, P.error_reply(req.id, req.op, P.BUSY,
                                               f"queue full ({self.options.max_queue} requests); retry later",
                                               retry_after_ms=retry_ms))
            return
        self._inflight[req.id] = job
        self.counters["requests"] += 1
        self._note_peer(tuple(envelope), job.t_recv)

    def _note_peer(self, key: tuple, now: float) -> None:
        """Track clients active in the last ``PEER_WINDOW_S`` (decides whether batching waits)."""
        if len(self._peers) >= 4096 and key not in self._peers:  # a flood of new clients: forget the old
            self._peers.clear()
        self._peers[key] = now
        if len(self._peers) > 1:
            for k in [k for k, t in self._peers.items() if t < now - PEER_WINDOW_S]:
                del self._peers[k]
        self._active_peers = len(self._peers)

    def _flush_replies(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                job, frames, kind = self._replies.get_nowait()
            except queue.Empty:
                return
            self._send_job_reply(job, frames, kind)

    def _send_job_reply(self, job: _Job, frames: List[bytes], kind: str) -> None:
        log.info("%s %s from %s: %s in %.0f ms", job.req.op, job.id, job.peer, kind,
                 (time.monotonic() - job.t_recv) * 1e3)
        self._inflight.pop(job.id, None)
        if kind == "unavailable":
            self.counters["unavailable"] += 1
        elif kind != "expired":  # (no retry of it can come: its client stopped waiting)
            self._remember(job, frames)
            self.metrics.observe_reply(job.req.op, time.monotonic() - job.t_recv)
        self._send(job.envelope, frames)

    def _send(self, envelope: List[bytes], frames: List[bytes]) -> bool:
        """Send a reply; a client that is gone (or not reading) loses it, counted in ``dropped``."""
        try:
            self._sock.send_multipart(envelope + frames, flags=zmq.NOBLOCK, copy=False)  # large frames by reference
            return True
        except zmq.Again:
            reason = "client not reading (high-water mark)"
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            reason = "client gone"
        self.counters["dropped"] += 1
        log.info("reply dropped: %s", reason)
        return False

    def _remember(self, job: _Job, frames: List[bytes]) -> None:
        """Keep a computed reply for ``reply_ttl_s`` so that a retry is answered without recomputing."""
        nbytes = sum(len(f) for f in frames)
        if nbytes > self.options.reply_cache_bytes:
            return
        self._store[job.id] = _Stored(job.fp, frames, nbytes, time.monotonic() + self.options.reply_ttl_s)
        self._store_bytes += nbytes
        self._expire_store()
        while self._store_bytes > self.options.reply_cache_bytes:
            self._store_bytes -= self._store.popitem(last=False)[1].nbytes

    def _expire_store(self) -> None:
        now = time.monotonic()
        while self._store:
            rid, item = next(iter(self._store.items()))
            if item.expires > now:
                return
            del self._store[rid]
            self._store_bytes -= item.nbytes

    @staticmethod
    def _unavailable(req: P.Request) -> List[bytes]:
        return P.error_reply(req.id, req.op, P.UNAVAILABLE, "server is shutting down; retry",
                             retry_after_ms=UNAVAILABLE_RETRY_MS)

    # ------------------------------------------------------------------ worker thread
    def _expire(self, job: _Job, what: str = "not run: it waited {s:.1f} s in the queue") -> None:
        """A queued request whose ``deadline_ms`` passed: answered ``expired`` (``what`` the first
        words, ``{s}`` the seconds since it came), not run."""
        self.counters["expired"] += 1
        waited = time.monotonic() - job.t_recv
        self._post(job, P.error_reply(job.id, job.req.op, P.EXPIRED,
                                      f"{what.format(s=waited)}, past its deadline_ms {job.req.deadline_ms:g} "
                                      f"(its client no longer waits)"), "expired")

    def _post(self, job: _Job, frames: List[bytes], kind: str) -> None:
        self._replies.put((job, frames, kind))
        self._wake()

    def _worker_loop(self) -> None:
        held: Deque[_Job] = collections.deque()  # jobs of the other op set aside, in arrival order
        while not self._stopping.is_set():
            if held:
                first = held.popleft()
            else:
                try:
                    first = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
            wait_s = self.options.max_wait_ms / 1000.0 if self._active_peers > 1 else 0.0
            batch, held = gather_batch(first, held, self._queue, self.options.max_batch, first.t_recv + wait_s,
                                       lambda job: job.req.op)
            if self._stopping.is_set():
                for job in batch:
                    self._post(job, self._unavailable(job.req), "unavailable")
                break
            self._run_batch(batch)
        for job in held:
            self._post(job, self._unavailable(job.req), "unavailable")

    def _step_loop(self) -> None:
        """Worker of ``scheduling="step"``: admit while slots are free, then one UNet step for all
        (:func:`~gr_gdmcom.codec.stepper.drive`)."""
        sched = StepScheduler(self.codec, self.options.max_batch)

        def submit(job):
            req, codec = job.req, self._variants.get(job.config)
            return job.id, (sched.submit_encode(job.id, req.image, req.name, codec=codec) if req.op == "encode" else
                            sched.submit_decode(job.id, req.symbols, req.meta, req.snr_db, req.mask, codec=codec))

        def after_step(width, calls, seconds):
            self.counters["batches"] += 1
            self.counters["model_calls"] += calls
            self.metrics.observe_batch("step", width)
            self._batch_ms = 0.8 * self._batch_ms + 0.2 * seconds * 1e3

        drive(sched, self._queue, submit, self._reply_step, self._fail, self._lock, self._stopping.is_set, after_step,
              self._count_retry)

    def _reply_step(self, job: _Job, t_admit: float, res) -> None:
        batch = res.record.get("batch", 1) if not isinstance(res, Failed) else 0
        self._post(job, *self._result_reply(job, res, dict(queue_ms=(t_admit - job.t_recv) * 1e3,
                                                            codec_ms=(time.monotonic() - t_admit) * 1e3,
                                                            batch=batch)))

    def _count_retry(self) -> None:
        self.counters["batch_retries"] += 1

    def _fail(self, jobs: List[_Job], exc: Exception) -> None:
        for job in jobs:
            self.counters["failed"] += 1
            self._post(job, P.error_reply(job.id, job.req.op, P.INTERNAL, f"{type(exc).__name__}: {exc}"), "failed")

    def _run_batch(self, batch: List[_Job]) -> None:
        """One codec call per group of requests with the same settings (most batches: one)."""
        groups: dict = {}
        for job in batch:
            groups.setdefault(repr(job.config), []).append(job)
        for group in groups.values():
            self._run_group(group)

    def _run_group(self, batch: List[_Job]) -> None:
        """Run ``batch`` (one op, one settings) and answer each request; a call that raises is
        retried in halves, and only a request whose own call raises is answered ``internal``."""
        for job, out in split_on_failure(batch, self._codec_call, f"{batch[0].req.op} batch", self._count_retry):
            if isinstance(out, Exception):
                self._fail([job], out)
            else:
                self._post(job, *self._result_reply(job, *out))

    def _codec_call(self, batch: List[_Job]) -> list:
        """One ``encode_many``/``decode_many`` call over ``batch`` -> ``[(result, server info)]``
        (raises what the model call raises)."""
        op = batch[0].req.op
        t0 = time.monotonic()
        with self._lock:
            codec = self._variants.get(batch[0].config)
            calls0 = self.codec.stats["unet_calls"]
            if op == "encode":
                results = codec.encode_many([j.req.image for j in batch], [j.req.name for j in batch])
            else:
                results = codec.decode_many([(j.req.symbols, j.req.meta, j.req.snr_db, j.req.mask) for j in batch])
            calls = self.codec.stats["unet_calls"] - calls0
        t1 = time.monotonic()
        self.counters["batches"] += 1
        self.counters["model_calls"] += calls
        self.metrics.observe_batch(op, len(batch))
        self._batch_ms = 0.8 * self._batch_ms + 0.2 * (t1 - t0) * 1e3
        log.info("%s batch of %d: %d model calls in %.1f ms", op, len(batch), calls, (t1 - t0) * 1e3)
        return [(res, dict(queue_ms=(t0 - job.t_recv) * 1e3, codec_ms=(t1 - t0) * 1e3, batch=len(batch)))
                for job, res in zip(batch, results)]

    def _result_reply(self, job: _Job, res, server_info: dict) -> Tuple[List[bytes], str]:
        op = job.req.op
        if isinstance(res, Failed):
            self.counters["failed"] += 1
            return P.error_reply(job.id, op, P.BAD_IMAGE if op == "encode" else P.REJECTED, res.error), "failed"
        try:
            res.record["server"] = server_info
            cid = self._config_id if self._config_id is not None else self.status()["config_id"]
            frames = (P.encoded_reply(job.id, res, config_id=cid) if op == "encode" else
                      P.decoded_reply(job.id, res, job.req.image_format, self.options.png_level, config_id=cid))
        except Exception as exc:  # pragma: no cover - serialisation bug
            log.exception("cannot serialise the %s reply for %s", op, job.id)
            self.counters["failed"] += 1
            return P.error_reply(job.id, op, P.INTERNAL, f"{type(exc).__name__}: {exc}"), "failed"
        self.counters["served"] += 1
        self.served_ids.append(job.id)
        return frames, "served"
