"""``gdmcom serve``, ``keys``, ``broker`` and ``server-status`` (registered by :mod:`gr_gdmcom.cli`)."""

from __future__ import annotations

import json
import signal
import sys
import threading

from ..config import add_codec_args, codec_config_from_args, finite_float


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


def check_serve_args(args) -> None:
    """The numbers of ``gdmcom serve`` that its objects would refuse in their own words (or not at
    all): ValueError naming the option (one line, exit 2)."""
    from ..cli import check_threads

    checks = [(args.max_batch >= 1, f"--max-batch must be >= 1, got {args.max_batch}"),
              (args.max_queue >= 1, f"--max-queue must be >= 1, got {args.max_queue}"),
              (args.max_wait_ms >= 0, f"--max-wait-ms must be >= 0, got {args.max_wait_ms:g}"),
              (args.max_request_mb * (1 << 20) >= 1024, f"--max-request-mb must be at least 1 KiB (0.001), "
                                                        f"got {args.max_request_mb:g}"),
              (args.reply_cache_mb >= 0, f"--reply-cache-mb must be >= 0 (0: keep no replies), "
                                         f"got {args.reply_cache_mb:g}"),
              (0 <= args.png_level <= 9, f"--png-level must be in 0..9, got {args.png_level}"),
              (-1 <= args.metrics_port <= 65535, f"--metrics-port must be a TCP port 0..65535 (0: any free one) "
                                                 f"or -1 (off), got {args.metrics_port}")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_threads(args.torch_threads)


def cmd_serve(args) -> int:
    from .server import ServerOptions

    check_serve_args(args)
    opts = ServerOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_request_bytes=int(args.max_request_mb * (1 << 20)), png_level=args.png_level,
                         reply_cache_bytes=int(args.reply_cache_mb * (1 << 20)),
                         scheduling=args.scheduling).validate()
    cfg = codec_config_from_args(args)
    try:
        curve = _curve_from_args(args)
        server, device, cleanup = (_ray_gateway if args.engine == "ray" else _local_server)(args, cfg, opts, curve)
    except (OSError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = _stop_on_signal()
    try:
        try:
            server.start()
            metrics_port = None if args.metrics_port < 0 else server.metrics.serve_http(args.metrics_port,
                                                                                         args.metrics_addr)
        except OSError as exc:
            if server.last_endpoint:  # the endpoint was bound: it was the metrics port
                exc = f"cannot serve metrics at {args.metrics_addr}:{args.metrics_port} (--metrics-port): " \
                      f"{exc.strerror or exc}"
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _emit(dict(event="listening", endpoint=server.last_endpoint, mode="connect" if args.connect else "bind",
                   model=cfg.model, device=device, max_batch=opts.max_batch, max_queue=opts.max_queue,
                   engine=args.engine, metrics_port=metrics_port))
        _wait(stop)
    finally:  # whatever ends it (an error above, a signal, an exception): a joined cluster loses our application
        server.stop()
        cleanup()
    _emit(dict(event="stopped", **{k: server.counters[k] for k in ("served", "failed", "busy", "batches")}))
    return 0


def speed_options_from_args(args) -> dict:
    """``gdmcom serve``'s speed flags -> :func:`~gr_gdmcom.codec.accel.apply_speed_options` keyword
    arguments (the same for the local engine and every Ray replica)."""
    return dict(attention=args.attention, channels_last=args.channels_last,
                compile=args.compile or args.compile_mode is not None or args.compile_vae,
                compile_mode=args.compile_mode, compile_vae=args.compile_vae, fuse_qkv=args.fuse_qkv,
                inductor_tuning=args.inductor_tuning)


def _local_server(args, cfg, opts, curve):
    """The model in this process: (InferenceServer, device, cleanup)."""
    from ..codec import GenerativeCodec, ModelLoadError
    from .server import InferenceServer

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        codec = GenerativeCodec(cfg)
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None
    from ..codec.accel import apply_speed_options, warm_up

    apply_speed_options(codec.c, **speed_options_from_args(args))
    if getattr(codec.c, "speed", {}).get("compile"):
        warm_up(codec, size=args.warm_up_size)  # compile before the first request, not during it
    server = InferenceServer(codec, bind=args.bind, connect=args.connect, options=opts, curve=curve)
    return server, str(codec.c.device), lambda: None


def _ray_gateway(args, cfg, opts, curve):
    """The model on Ray Serve replicas behind a gateway in this process: (RayGateway, device, cleanup)."""
    try:
        from . import ray_engine
    except ImportError as exc:
        raise ImportError(f"--engine ray needs Ray Serve: pip install 'gr-gdmcom[ray]' ({exc})") from None
    ro = ray_engine.RayOptions(replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                               gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica,
                               torch_threads=args.torch_threads, address=args.ray_address,
                               max_inflight=args.max_inflight, metrics_port=args.ray_metrics_port,
                               start_timeout=args.ray_start_timeout, health_period=args.ray_health_period,
                               health_timeout=args.ray_health_timeout,
                               stall_timeout=args.ray_stall_timeout).validate()
    try:
        handle, info, started = ray_engine.deploy(cfg, ro, max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms,
                                                  speed=speed_options_from_args(args),
                                                  warm_up_size=args.warm_up_size, scheduling=opts.scheduling)
    except ray_engine.DeployError as exc:  # a model or resources the deployment cannot start with: one line
        raise ValueError(str(exc)) from None
    def cleanup():  # the local instance stopped, or the application deleted from the cluster joined
        ray_engine.shutdown(started_ray=started)

    try:
        server = ray_engine.RayGateway(handle, info, bind=args.bind, connect=args.connect, options=opts, curve=curve,
                                       ray_options=ro)
    except BaseException:
        cleanup()
        raise
    return server, info["device"], cleanup


def _curve_from_args(args):
    """``--curve-secret-key`` / ``--curve-clients`` / ``--curve-allow-any`` -> CurveServer or None."""
    from .security import CurveServer

    if args.curve_secret_key is None:
        if args.curve_clients or args.curve_allow_any:
            raise ValueError("--curve-clients and --curve-allow-any need --curve-secret-key")
        return None
    if args.connect:  # (the broker's backend would have to be this server's CURVE client)
        raise ValueError("--curve-secret-key with --connect: gdmcom broker does not speak CURVE, so this server "
                         "would refuse the broker itself and receive nothing; serve with CURVE bound (--bind) "
                         "and list the servers in the clients' server string, or keep the broker and its "
                         "servers on a trusted network (docs/server.md)")
    return CurveServer(args.curve_secret_key, clients=args.curve_clients, allow_any=args.curve_allow_any)


def cmd_keys(args) -> int:
    import zmq.auth

    from ..cli import check_out
    from .security import check_key_name, make_keys, public_key_hex

    for name in args.name:
        check_key_name(name)
    if len(set(args.name)) < len(args.name):  # the second of a name would fail after the first was written
        raise ValueError(f"--name lists a name twice: {' '.join(args.name)}")
    check_out(args.out)
    for name in args.name:
        try:
            public, secret = make_keys(args.out, name)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        z85_key = zmq.auth.load_certificate(str(public))[0]
        _emit(dict(event="keys", name=name, public_file=str(public), secret_file=str(secret),
                   public_z85=z85_key.decode("ascii"), public_hex=public_key_hex(z85_key)))
    return 0


def cmd_broker(args) -> int:
    from .broker import Broker

    if args.max_message_mb is not None and not args.max_message_mb * (1 << 20) >= 1024:
        raise ValueError(f"--max-message-mb must be at least 1 KiB (0.001), got {args.max_message_mb:g}")
    limit = None if args.max_message_mb is None else int(args.max_message_mb * (1 << 20))
    broker = Broker(args.frontend, args.backend, max_message_bytes=limit)
    stop = _stop_on_signal()
    try:
        broker.start()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _emit(dict(event="listening", frontend=broker.frontend_endpoint, backend=broker.backend_endpoint))
    _wait(stop)
    broker.stop()
    _emit(dict(event="stopped", frontend=broker.frontend_endpoint, backend=broker.backend_endpoint))
    return 0


def cmd_server_status(args) -> int:
    from .backend import BackendError, remote_backend

    try:
        client = remote_backend(args.server, timeout_ms=args.timeout_ms, retries=0)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            _emit(client.status())
        except BackendError as exc:
            from .client import unresolved_hosts

            bad = unresolved_hosts(client.endpoints)
            print(f"error: {exc}" + (f" (host name does not resolve: {', '.join(bad)})" if bad else ""),
                  file=sys.stderr)
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
    s.add_argument("--scheduling", choices=("batch", "step"), default="batch",
                   help="batch: a batch of requests runs to completion; step: requests join and leave the "
                        "batched UNet call at every step (docs/server.md) [default=%(default)r]")
    s.add_argument("--max-wait-ms", type=finite_float, default=10.0,
                   help="longest wait for a batch to fill, from a request's arrival [default=%(default)r]")
    s.add_argument("--max-queue", type=int, default=32,
                   help="requests waiting for the model; beyond it the server answers busy [default=%(default)r]")
    s.add_argument("--max-request-mb", type=finite_float, default=64.0,
                   help="largest request accepted, MiB [default=%(default)r]")
    s.add_argument("--png-level", type=int, default=1, help="zlib level of PNG replies, 0..9 [default=%(default)r]")
    s.add_argument("--reply-cache-mb", type=finite_float, default=16.0,
                   help="memory for replies kept for retries, MiB [default=%(default)r]")
    s.add_argument("--attention", choices=("sdpa", "classic"), default="sdpa",
                   help="attention kernel: PyTorch SDPA or diffusers' explicit one [default=%(default)r]")
    s.add_argument("--channels-last", action="store_true", help="NHWC memory format for UNet and VAE convolutions")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (compiled at start-up by one warm-up encode+decode)")
    s.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default=None,
                   help="torch.compile mode (implies --compile); reduce-overhead adds CUDA graphs: on an H100 one "
                        "512x512 image's TX+RX went from 0.96 s to 0.27 s, 0.21 s with --fuse-qkv (docs/codec.md) "
                        "[default: default]")
    s.add_argument("--compile-vae", action="store_true",
                   help="also torch.compile the VAE encoder and decoder (implies --compile)")
    s.add_argument("--fuse-qkv", action="store_true",
                   help="diffusers' fused QKV projections (one matrix product per attention; needs --attention sdpa)")
    s.add_argument("--inductor-tuning", action="store_true",
                   help="with --compile: the inductor settings of diffusers' speed-up guide (longer start-up)")
    s.add_argument("--warm-up-size", type=int, default=512,
                   help="image side of the start-up warm-up with --compile: compile for the size you serve "
                        "[default=%(default)r]")
    s.add_argument("--threads", "--torch-threads", dest="torch_threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default) [default=%(default)r]")
    s.add_argument("--metrics-port", type=int, default=-1,
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics (0: any free port, printed; "
                        "-1: off) [default=%(default)r]")
    s.add_argument("--metrics-addr", default="127.0.0.1",
                   help="address of the metrics endpoint [default=%(default)r]")
    ray_ = s.add_argument_group("Ray Serve engine (--engine ray; docs/server.md)")
    ray_.add_argument("--engine", choices=("local", "ray"), default="local",
                      help="local: the model in this process; ray: on Ray Serve replicas behind this gateway "
                           "[default=%(default)r]")
    ray_.add_argument("--replicas", type=int, default=1, help="fixed number of replicas [default=%(default)r]")
    ray_.add_argument("--min-replicas", type=int, default=None,
                      help="autoscaling: fewest replicas (with --max-replicas) [default=%(default)r]")
    ray_.add_argument("--max-replicas", type=int, default=None,
                      help="autoscaling: most replicas; replaces --replicas [default=%(default)r]")
    ray_.add_argument("--gpus-per-replica", type=finite_float, default=0.0,
                      help="GPUs of each replica (ray_actor_options num_gpus) [default=%(default)r]")
    ray_.add_argument("--cpus-per-replica", type=finite_float, default=1.0,
                      help="CPUs of each replica (ray_actor_options num_cpus) [default=%(default)r]")
    ray_.add_argument("--ray-address", default=None,
                      help="join a Ray cluster: auto, HOST:PORT (its GCS) or ray://HOST[:PORT] (Ray Client) "
                           "(default: start a local instance)")
    ray_.add_argument("--max-inflight", type=int, default=None,
                      help="requests at the deployment at once (default: 4 x max-batch per replica)")
    ray_.add_argument("--ray-metrics-port", type=int, default=0,
                      help="Ray's own Prometheus export port, local instance only (0: Ray's choice) "
                           "[default=%(default)r]")
    ray_.add_argument("--ray-start-timeout", type=finite_float, default=600.0, metavar="SECONDS",
                      help="longest wait for the replicas to be placed and load the model; then the gateway "
                           "exits naming what is pending (a joined cluster may be adding nodes) [default=%(default)r]")
    ray_.add_argument("--ray-health-period", type=finite_float, default=2.0, metavar="SECONDS",
                      help="Serve health-checks each replica this often (health_check_period_s); 3 failed checks "
                           "in a row replace it [default=%(default)r]")
    ray_.add_argument("--ray-health-timeout", type=finite_float, default=10.0, metavar="SECONDS",
                      help="a health check not answered within this fails (health_check_timeout_s): a hung replica "
                           "is replaced within about period + 3 x this [default=%(default)r]")
    ray_.add_argument("--ray-stall-timeout", type=finite_float, default=None, metavar="SECONDS",
                      help="a replica with requests whose loop has made no progress (no model call finished) for "
                           "this long fails its health checks (default: 120 on a GPU; on a CPU or with --compile "
                           "900, or 60 x max-batch if longer; 0: off)")
    sec = s.add_argument_group("CURVE authentication and encryption (docs/server.md)")
    sec.add_argument("--curve-secret-key", default=None, metavar="FILE",
                     help="this server's NAME.key_secret (gdmcom keys); enables CURVE [default=%(default)r]")
    sec.add_argument("--curve-clients", default=None, metavar="DIR",
                     help="folder of accepted client public keys (*.key) [default=%(default)r]")
    sec.add_argument("--curve-allow-any", action="store_true",
                     help="accept any client key (encryption without client authentication)")
    add_codec_args(s)
    s.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="make CURVE key pairs for gdmcom serve and its clients",
                       description="Write NAME.key (public) and NAME.key_secret (secret) for each name; "
                                   "print each public key (Z85 and hex, for server_key=).")
    k.add_argument("--out", required=True, help="folder for the key files")
    k.add_argument("--name", nargs="+", default=["server", "client"],
                   help="key pair names [default=%(default)r]")
    k.set_defaults(func=cmd_keys)

    b = sub.add_parser("broker", help="one address in front of several inference servers (ROUTER/DEALER proxy)")
    b.add_argument("--frontend", default="tcp://0.0.0.0:5555",
                   help="endpoint the flowgraphs connect to [default=%(default)r]")
    b.add_argument("--backend", default="tcp://0.0.0.0:5556",
                   help="endpoint the servers connect to (gdmcom serve --connect) [default=%(default)r]")
    b.add_argument("--max-message-mb", type=finite_float, default=None, metavar="MB",
                   help="largest frame a client may send, MiB: a client sending a larger one is disconnected, "
                        "alone, with no reply (give at least the servers' --max-request-mb + 0.0625); default: "
                        "no limit, the servers answer too_large")
    b.set_defaults(func=cmd_broker)

    st = sub.add_parser("server-status", help="print an inference server's status as JSON")
    st.add_argument("--server", required=True,
                    help="endpoint(s) of the server, comma-separated, with ?server_key=...&client_key_file=... "
                         "for a CURVE server")
    st.add_argument("--timeout-ms", type=int, default=5000, help="reply timeout, ms [default=%(default)r]")
    st.set_defaults(func=cmd_server_status)

