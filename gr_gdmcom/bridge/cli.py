"""``gdmcom serve``, ``gdmcom broker`` and ``gdmcom server-status`` (registered by :mod:`gr_gdmcom.cli`)."""

from __future__ import annotations

import json
import signal
import sys
import threading

from ..config import add_codec_args, codec_config_from_args


def _emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def _stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM (install before announcing the endpoint)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _wait(stop: threading.Event) -> None:
    while not stop.wait(0.5):
        pass


def cmd_serve(args) -> int:
    from ..codec import GenerativeCodec, ModelLoadError
    from .server import InferenceServer, ServerOptions

    opts = ServerOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_request_bytes=int(args.max_request_mb * (1 << 20)), png_level=args.png_level,
                         reply_cache_bytes=int(args.reply_cache_mb * (1 << 20))).validate()
    cfg = codec_config_from_args(args)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        codec = GenerativeCodec(cfg)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = InferenceServer(codec, bind=args.bind, connect=args.connect, options=opts)
    stop = _stop_on_signal()
    try:
        server.start()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _emit(dict(event="listening", endpoint=server.last_endpoint, mode="connect" if args.connect else "bind",
               model=cfg.model, device=str(codec.c.device), max_batch=opts.max_batch, max_queue=opts.max_queue))
    _wait(stop)
    server.stop()
    _emit(dict(event="stopped", **{k: server.counters[k] for k in ("served", "failed", "busy", "batches")}))
    return 0


def cmd_broker(args) -> int:
    from .broker import Broker

    broker = Broker(args.frontend, args.backend)
    stop = _stop_on_signal()
    try:
        broker.start()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _emit(dict(event="listening", frontend=broker.frontend_endpoint, backend=broker.backend_endpoint))
    _wait(stop)
    broker.stop()
    return 0


def cmd_server_status(args) -> int:
    from .backend import BackendError
    from .client import RemoteBackend

    with RemoteBackend(args.server, timeout_ms=args.timeout_ms, retries=0) as client:
        try:
            _emit(client.status())
        except BackendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def register(sub) -> None:
    """Add ``serve``, ``broker`` and ``server-status`` to the ``gdmcom`` subcommands."""
    s = sub.add_parser("serve", help="run the model as a ZMQ inference server for remote flowgraphs",
                       description="Load the model once and serve encode/decode requests over ZMQ "
                                   "(protocol: docs/protocol.md; operations: docs/server.md).")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--bind", default="tcp://0.0.0.0:5555",
                       help="endpoint to listen on (port 0: any free port) [default=%(default)r]")
    where.add_argument("--connect", default=None,
                       help="connect to a broker's backend endpoint instead of binding [default=%(default)r]")
    s.add_argument("--max-batch", type=int, default=4, help="requests per batched codec call [default=%(default)r]")
    s.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="longest wait for a batch to fill, from a request's arrival [default=%(default)r]")
    s.add_argument("--max-queue", type=int, default=32,
                   help="requests waiting for the model; beyond it the server answers busy [default=%(default)r]")
    s.add_argument("--max-request-mb", type=float, default=64.0,
                   help="largest request accepted, MiB [default=%(default)r]")
    s.add_argument("--png-level", type=int, default=1, help="zlib level of PNG replies, 0..9 [default=%(default)r]")
    s.add_argument("--reply-cache-mb", type=float, default=16.0,
                   help="memory for replies kept for retries, MiB [default=%(default)r]")
    s.add_argument("--threads", "--torch-threads", dest="torch_threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default) [default=%(default)r]")
    add_codec_args(s)
    s.set_defaults(func=cmd_serve)

    b = sub.add_parser("broker", help="one address in front of several inference servers (ROUTER/DEALER proxy)")
    b.add_argument("--frontend", default="tcp://0.0.0.0:5555",
                   help="endpoint the flowgraphs connect to [default=%(default)r]")
    b.add_argument("--backend", default="tcp://0.0.0.0:5556",
                   help="endpoint the servers connect to (gdmcom serve --connect) [default=%(default)r]")
    b.set_defaults(func=cmd_broker)

    st = sub.add_parser("server-status", help="print an inference server's status as JSON")
    st.add_argument("--server", required=True, help="endpoint(s) of the server, comma-separated")
    st.add_argument("--timeout-ms", type=int, default=5000, help="reply timeout, ms [default=%(default)r]")
    st.set_defaults(func=cmd_server_status)

