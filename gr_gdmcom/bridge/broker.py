"""A ROUTER/DEALER broker (``gdmcom broker``): one address for several servers.

Clients connect to the *frontend* (ROUTER); servers started with
``gdmcom serve --connect BACKEND`` connect to the *backend* (DEALER), which
hands requests to the connected servers in turn (``zmq.proxy``; round robin,
not load-aware: a server whose queue is full answers ``busy`` and the client
retries).  Servers come and go without the clients noticing; a request that
was on its way to a server that died is retried by the client after its
timeout.  The broker holds no state and never parses messages.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

import zmq

log = logging.getLogger(__name__)


class Broker:
    """``zmq.proxy_steerable`` between a ROUTER frontend and a DEALER backend, in a thread.

    Args:
        frontend: endpoint the clients connect to, e.g. ``tcp://0.0.0.0:5555``.
        backend: endpoint the servers connect to, e.g. ``tcp://0.0.0.0:5556``.
        context: ZMQ context (default: a private one, termed by :meth:`stop`).
        max_message_bytes: largest frame a client may send (``ZMQ_MAXMSGSIZE`` on the frontend):
            a client sending a larger one is disconnected, alone, with no reply.  None: no limit
            (the servers answer an oversized request ``too_large``).  Give it at least the
            servers' ``max_request_bytes`` + 64 KiB.

    After :meth:`start`, :attr:`frontend_endpoint` / :attr:`backend_endpoint`
    hold the bound addresses (the real port when ``:0`` was asked).
    """

    def __init__(self, frontend: str, backend: str, context: Optional[zmq.Context] = None,
                 max_message_bytes: Optional[int] = None):
        self.frontend, self.backend = frontend, backend
        self.max_message_bytes = max_message_bytes
        self._own_ctx = context is None
        self._ctx = context
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._ctrl_addr = f"inproc://gdmcom-broker-{id(self):x}"
        self._ctrl: Optional[zmq.Socket] = None
        self.frontend_endpoint = self.backend_endpoint = ""

    def start(self) -> "Broker":
        if self._ctx is None:
            self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="gdmcom-broker", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._close_ctx()
            raise OSError(f"broker cannot bind: {self._error}")
        self._ctrl = self._ctx.socket(zmq.PAIR)
        self._ctrl.connect(self._ctrl_addr)
        log.info("broker: clients -> %s, servers -> %s", self.frontend_endpoint, self.backend_endpoint)
        return self

    def _run(self) -> None:
        front = self._ctx.socket(zmq.ROUTER)
        back = self._ctx.socket(zmq.DEALER)
        ctrl = self._ctx.socket(zmq.PAIR)
        try:
            for s in (front, back, ctrl):
                s.setsockopt(zmq.LINGER, 0)
            if self.max_message_bytes is not None:  # per client connection: only the sender is cut off
                front.setsockopt(zmq.MAXMSGSIZE, int(self.max_message_bytes))
            front.bind(self.frontend)
            back.bind(self.backend)
            ctrl.bind(self._ctrl_addr)
            self.frontend_endpoint = front.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.backend_endpoint = back.getsockopt(zmq.LAST_ENDPOINT).decode()
        except zmq.ZMQError as exc:
            self._error = exc
        self._ready.set()
        try:
            if self._error is None:
                zmq.proxy_steerable(front, back, None, ctrl)
        except zmq.ContextTerminated:  # pragma: no cover - stop() without TERMINATE
            pass
        finally:
            for s in (front, back, ctrl):
                s.close(linger=0)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._ctrl.send(b"TERMINATE")
        self._thread.join()
        self._ctrl.close(linger=0)
        self._thread = self._ctrl = None
        self._close_ctx()

    def _close_ctx(self) -> None:
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def serve_forever(self) -> None:
        if self._thread is None:
            self.start()
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
