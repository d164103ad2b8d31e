"""The codec on Ray Serve behind the ZMQ edge (``gdmcom serve --engine ray``, ``docs/server.md``).

::

    clients --ZMQ protocol v1--> RayGateway (an InferenceServer: validation, dedupe, busy, CURVE, metrics)
                                     |  handle.encode/decode.remote(...)   (at most max_inflight at once)
                                     v
                        Ray Serve deployment "CodecReplica" x N  (GenerativeCodec unchanged inside;
                        a batch or step loop per replica; replicas restarted by Serve's health checks)

* :class:`CodecReplica` is the deployment: one :class:`~gr_gdmcom.codec.GenerativeCodec`
  per replica; ``encode``/``decode`` hand each request to the replica's batch
  loop, which forms batches as the plain server's worker does (``max_batch``,
  ``max_wait_ms``, the other op set aside: :func:`~.server.gather_batch`) and
  calls ``encode_many``/``decode_many`` (a call that raises is retried in halves, so only the
  requests whose own call fails get the exception: :func:`~.server.split_on_failure`); with
  ``scheduling="step"`` the gateway calls
  ``encode_step``/``decode_step`` instead, which hand each request to the
  replica's :class:`~gr_gdmcom.codec.stepper.StepScheduler` loop (requests join
  and leave the batched UNet call at every step, as ``gdmcom serve --scheduling
  step`` does in one process).  Its :meth:`~CodecReplica.check_health` also fails while its loop
  has requests and has finished no model call for the stall bound (``--ray-stall-timeout``), and
  Serve checks every ``health_period`` with ``health_timeout`` to answer, so a replica that hangs
  or stalls is replaced within a bounded time (docs/server.md) and its requests are sent again.
* :func:`deploy` starts a local Ray instance (or joins ``address``: ``auto``,
  ``host:port`` or ``ray://host:port``, where nothing answering is a :class:`DeployError`
  within seconds), runs the application with ``num_replicas`` or an
  autoscaling range and ``ray_actor_options`` (GPUs, CPUs per replica), and
  returns its handle and what a replica reports (:meth:`CodecReplica.info`).
  What cannot start is a :class:`DeployError` of one line, never an endless
  wait: a model the gateway's check refuses (local instance), more GPUs/CPUs
  than a local instance has (before deploying), a replica that fails to start
  (its exception's line), or a deployment not running within ``start_timeout``
  (what is pending; a line every ``PROGRESS_EVERY_S`` while it waits).
* :class:`RayGateway` speaks protocol v1 in front exactly as ``gdmcom serve``
  does (it *is* an :class:`~.server.InferenceServer` with the worker thread
  replaced): validated requests are sent to the deployment, at most
  ``max_inflight`` at a time; beyond that they wait in the bounded queue,
  beyond which the gateway answers ``busy`` with ``retry_after_ms``.  A request
  whose replica died under it (``RayActorError`` ...) is sent again, up to
  ``attempts`` times, so a killed replica loses nothing; the gateway's request-id
  bookkeeping answers each request once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import math
import os
import queue
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import ray
import ray.exceptions
from ray import serve

from ..config import CodecConfig
from . import protocol as P
from .backend import CodecVariants
from .server import InferenceServer, gather_batch, split_on_failure

log = logging.getLogger(__name__)

APP_NAME = "gdmcom"
START_TIMEOUT_S = 600.0  # longest wait for the deployment to run (replicas scheduled, models loaded)
PROGRESS_EVERY_S = 10.0  # while deploy() waits: a line saying what for, this often
PROBE_TIMEOUT_S = 3.0  # --ray-address HOST:PORT: how long one TCP connection to it may take
POLL_S = 0.5
RESUBMIT_DELAY_S = 0.2  # wait before the n-th re-send: n times this
#: Serve's health check of each replica (``health_check_period_s``/``health_check_timeout_s``, Serve's defaults
#: 10 s and 30 s): Serve marks a replica unhealthy after REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD (3) failed
#: checks in a row and starts another; a replica that does not answer at all (SIGSTOP, a call that holds the
#: GIL) is replaced within HEALTH_PERIOD_S * 1.1 + 3 * HEALTH_TIMEOUT_S (Serve's defaults: 100 s, measured
#: 99 s; these: 32 s).
HEALTH_PERIOD_S = 2.0
HEALTH_TIMEOUT_S = 10.0
#: --ray-stall-timeout auto: how long a replica's loop may make no progress (no UNet call, no batch or
#: request finished) while it has requests before its health check fails.  A GPU replica's slowest
#: legitimate call is seconds; on a CPU, or with --compile (a new shape compiles inside a request), one
#: call can take minutes: measured on 2 shared cores, 1 torch thread, an SD-1.5-size model at 512²: a
#: UNet call (with guidance) 20 s and a VAE decode 18 s per image of the batch, so on a CPU the bound is
#: also STALL_CPU_PER_IMAGE_S per image of a full batch (max_batch), if that is longer.
STALL_GPU_S = 120.0
STALL_CPU_S = 900.0
STALL_CPU_PER_IMAGE_S = 60.0
#: ... or this many times the longest wait for progress the replica has seen, if that is longer.
STALL_FACTOR = 4.0
#: Set for a local instance the gateway starts (unless set already): Serve stops an unhealthy replica at
#: once instead of draining its requests for graceful_shutdown_timeout_s (20 s) first -- a hung replica
#: finishes none of them, and the gateway sends them again when the replica is gone.
FORCE_STOP_ENV = "RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS"

#: Failures of the replica, not of the request: the gateway sends the request again.
REPLICA_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.WorkerCrashedError)


#: What a replica counts (:meth:`CodecReplica._counts`, in this order), summed by the gateway into ``status``.
REPLICA_COUNTS = ("batches", "model_calls", "batch_retries")

#: Requests at a replica, in batches of ``max_batch``: while one batch runs, its queue holds the next
#: batch of each op (encodes and decodes interleave where transmitters and receivers share the
#: deployment).  With 2, mixed traffic ran in batches of 1.3 on average (then under ``@serve.batch``;
#: benchmarks/bench_serving.py --engine ray --mix link, docs/server.md).
INFLIGHT_BATCHES = 4


@dataclass
class RayOptions:
    """How the deployment runs (``gdmcom serve --engine ray`` flags of the same names).

    Attributes:
        replicas: fixed number of replicas (ignored when ``max_replicas`` is set).
        min_replicas, max_replicas: autoscaling range; Serve adds replicas while the
            ongoing requests per replica exceed ``target_ongoing``.
        target_ongoing: autoscaling target of ongoing requests per replica.
        gpus_per_replica, cpus_per_replica: ``ray_actor_options`` of each replica.
        torch_threads: torch CPU threads in each replica (0: torch's default).
        address: None starts a local Ray instance; ``auto`` joins the cluster of this
            host, ``host:port`` the cluster of that GCS, ``ray://host[:port]`` a remote one (Ray
            Client); checked by :meth:`validate`.
        max_inflight: requests the gateway has at the deployment at once (None:
            ``INFLIGHT_BATCHES * max_batch`` per replica, at the largest replica count).
        attempts: tries of one request when its replica dies under it.
        metrics_port: Ray's own Prometheus metrics export port (local instance only; 0: off).
        start_timeout: seconds :func:`deploy` waits for the deployment to run (replicas placed
            and their models loaded) before it gives up, naming what is pending.
        health_period, health_timeout: Serve's ``health_check_period_s`` and ``health_check_timeout_s``
            (a replica that fails 3 checks in a row is replaced).
        stall_timeout: a replica with requests whose loop has made no progress for this long fails its
            health check (None: ``STALL_GPU_S`` on a GPU, ``STALL_CPU_S`` or ``STALL_CPU_PER_IMAGE_S`` x
            ``max_batch`` on a CPU or with ``--compile``; 0: off); or ``STALL_FACTOR`` times its longest
            wait for progress so far, if longer.
    """

    replicas: int = 1
    min_replicas: Optional[int] = None
    max_replicas: Optional[int] = None
    target_ongoing: float = 2.0
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    torch_threads: int = 0
    address: Optional[str] = None
    max_inflight: Optional[int] = None
    attempts: int = 4
    metrics_port: int = 0
    start_timeout: float = START_TIMEOUT_S
    health_period: float = HEALTH_PERIOD_S
    health_timeout: float = HEALTH_TIMEOUT_S
    stall_timeout: Optional[float] = None

    def validate(self) -> "RayOptions":
        if self.max_replicas is not None:
            lo = 1 if self.min_replicas is None else self.min_replicas
            if not 0 <= lo <= self.max_replicas or self.max_replicas < 1:
                raise ValueError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                                 f"{self.min_replicas}, {self.max_replicas}")
        elif self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.gpus_per_replica < 0 or self.cpus_per_replica < 0 or self.attempts < 1:
            raise ValueError("gpus_per_replica and cpus_per_replica must be >= 0 and attempts >= 1")
        if not self.start_timeout > 0:
            raise ValueError(f"start_timeout must be > 0 seconds, got {self.start_timeout}")
        if not (0 < self.health_period < math.inf and 0 < self.health_timeout < math.inf):
            raise ValueError(f"health_period and health_timeout must be > 0 seconds, got {self.health_period}, "
                             f"{self.health_timeout}")
        if self.stall_timeout is not None and not 0 <= self.stall_timeout < math.inf:
            raise ValueError(f"stall_timeout must be >= 0 seconds (0: off), got {self.stall_timeout}")
        _host_port(self.address)
        return self

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    def deployment_options(self, max_batch: int) -> dict:
        """``Deployment.options(...)`` keyword arguments."""
        opts = dict(ray_actor_options=dict(num_gpus=self.gpus_per_replica, num_cpus=self.cpus_per_replica),
                    max_ongoing_requests=INFLIGHT_BATCHES * max_batch,
                    health_check_period_s=self.health_period, health_check_timeout_s=self.health_timeout)
        if self.max_replicas is not None:
            opts["autoscaling_config"] = dict(min_replicas=1 if self.min_replicas is None else self.min_replicas,
                                              max_replicas=self.max_replicas,
                                              target_ongoing_requests=self.target_ongoing)
        else:
            opts["num_replicas"] = self.replicas
        return opts


def _settle(fut: concurrent.futures.Future, outcome) -> None:
    """Answer a request's future with ``outcome`` (an exception: raised to its caller) unless its
    caller gave up on it (Serve cancelled the call: the future is cancelled, and answering it would
    raise in the replica's loop and stop it)."""
    try:
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        log.info("a request was cancelled before its result was ready; result dropped")


class CodecReplica:
    """One replica of the deployment: a :class:`GenerativeCodec` behind a batch or a step loop.

    Args:
        config: :class:`CodecConfig` fields (a dict: plain data crosses processes).
        max_batch: most requests per codec call; max_wait_ms: longest wait for a batch to fill (ms).
        torch_threads: torch CPU threads (0: torch's default).
        speed: :func:`~gr_gdmcom.codec.accel.apply_speed_options` keyword arguments (``gdmcom serve``'s
            ``--attention --channels-last --compile* --fuse-qkv``); with a compiled model the replica runs
            one warm-up encode+decode of ``warm_up_size`` pixels before it takes requests.
        scheduling: ``batch`` (``encode``/``decode``: whole requests batched) or ``step``
            (``encode_step``/``decode_step``: step-level, up to ``max_batch`` requests in flight).
        stall_timeout: :attr:`RayOptions.stall_timeout` (:meth:`check_health`).
    """

    def __init__(self, config: dict, max_batch: int = 4, max_wait_ms: float = 10.0, torch_threads: int = 0,
                 speed: Optional[dict] = None, warm_up_size: int = 512, scheduling: str = "batch",
                 stall_timeout: Optional[float] = None):
        import torch

        from ..codec import GenerativeCodec
        from ..codec.accel import apply_speed_options, warm_up

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.codec = GenerativeCodec(CodecConfig(**config))
        if speed:
            apply_speed_options(self.codec.c, **speed)
            if getattr(self.codec.c, "speed", {}).get("compile"):
                warm_up(self.codec, size=warm_up_size)
        self._lock = threading.Lock()  # the codec is not thread-safe
        self._variants = CodecVariants(self.codec)  # requests' own settings (protocol ``settings``)
        self.max_batch, self.max_wait_s = int(max_batch), max_wait_ms / 1000.0
        self.name = serve.get_replica_context().replica_id.unique_id
        self.scheduling = scheduling
        self._jobs: "queue.Queue" = queue.Queue()
        self._stepper = None
        self._sched = None
        self._batches = 0  # whole-request codec calls (batch scheduling, step fallbacks aside)
        self._admitted: dict = {}  # step loop: key -> counts when the request was admitted
        self._init_progress(stall_timeout)
        if scheduling == "step":
            from ..codec.stepper import StepScheduler

            self._sched = StepScheduler(self.codec, max_batch)
            self._stepper = threading.Thread(target=self._step_loop, name="gdmcom-step", daemon=True)
        elif scheduling == "batch":
            self._stepper = threading.Thread(target=self._batch_loop, name="gdmcom-batch", daemon=True)
        else:
            raise ValueError(f"scheduling must be batch or step, got {scheduling!r}")
        self._stepper.start()

    def info(self) -> dict:
        """What the gateway needs: the protocol limits, model, device, dtype, codec settings."""
        c = self.codec
        return dict(limits=asdict(P.Limits.for_codec(c)), model=c.config.model, model_hash=c.model_hash,
                    device=str(c.c.device),
                    dtype=str(c.c.dtype).replace("torch.", ""), config=asdict(c.config),
                    speed=dict(getattr(c.c, "speed", {})), scheduling=self.scheduling, replica=self.name,
                    pid=os.getpid(), stall_bound_s=self.stall_bound())

    def check_health(self) -> None:
        """Serve's periodic health check (every ``health_period``): a replica whose codec or loop is
        gone, or whose loop has had requests and made no progress for longer than
        :meth:`stall_bound` (a call stuck in the GPU driver, a deadlock), raises; Serve replaces a
        replica after 3 failed checks in a row.  (A replica that does not answer at all fails
        by ``health_timeout``.)"""
        if self.codec is None:
            raise RuntimeError("codec not loaded")
        if not self._stepper.is_alive():
            raise RuntimeError(f"{self.scheduling} loop stopped")
        stalled = self._stalled(time.monotonic())
        if stalled:
            log.error("%s", stalled)
            raise RuntimeError(stalled)

    # ------------------------------------------------------------------ progress of the loop
    def _init_progress(self, stall_timeout: Optional[float]) -> None:
        self.stall_timeout = stall_timeout
        self._pending: set = set()  # futures of requests not answered yet
        self._mark: Optional[tuple] = None  # the loop's counters when they last changed (or it was idle) ...
        self._mark_t = 0.0  # ... at this time (monotonic)
        self._slowest_gap = 0.0  # the longest wait for progress seen with requests pending (s)

    def _progress(self) -> tuple:
        """What moves while the loop works: batches and steps run, UNet calls, images encoded and
        decoded, failures, retries (each model call of a batch counts, not only its end)."""
        return self._counts() + tuple(self.codec.stats.values())

    def stall_bound(self) -> Optional[float]:
        """Seconds the loop may make no progress with requests pending (None: not checked):
        ``stall_timeout`` (automatic: ``STALL_GPU_S`` on a GPU without ``--compile``, else the longer of
        ``STALL_CPU_S`` and ``STALL_CPU_PER_IMAGE_S`` per image of a full batch), or ``STALL_FACTOR``
        times the longest wait this replica has seen, if longer."""
        floor = self.stall_timeout
        if floor is None:
            compiled = bool(getattr(self.codec.c, "speed", {}).get("compile"))
            floor = (STALL_GPU_S if str(self.codec.c.device).startswith("cuda") and not compiled else
                     max(STALL_CPU_S, STALL_CPU_PER_IMAGE_S * self.max_batch))
        return max(floor, STALL_FACTOR * self._slowest_gap) if floor > 0 else None

    def _stalled(self, now: float) -> Optional[str]:
        """Why the loop counts as stalled at ``now`` (one line), or None; called by each health check,
        which samples the loop's progress."""
        mark, pending = self._progress(), len(self._pending)
        if mark != self._mark or not pending:
            if pending and self._mark is not None:
                self._slowest_gap = max(self._slowest_gap, now - self._mark_t)
            self._mark, self._mark_t = mark, now
            return None
        bound, waited = self.stall_bound(), now - self._mark_t
        if bound is None or waited <= bound:
            return None
        return (f"replica {self.name}: the {self.scheduling} loop has made no progress for {waited:.0f} s with "
                f"{pending} request(s) pending (stall bound {bound:g} s, --ray-stall-timeout)")

    _retries = 0  # failed model calls over several requests that were retried in parts (counted per replica)

    def _count_retry(self) -> None:
        self._retries += 1

    def _counts(self) -> Tuple[int, int, int]:
        """(batches, UNet calls, batch retries) this replica has run so far (:data:`REPLICA_COUNTS`):
        a request's reply carries them from before and after it, so the gateway can sum what the
        replicas did (``status``)."""
        steps = self._sched.stats["iterations"] if self._sched is not None else 0
        return self._batches + steps, int(self.codec.stats["unet_calls"]), self._retries

    async def encode(self, item: Tuple[bytes, str], wait: bool = True) -> tuple:
        """One encode through the batch loop (``scheduling="batch"``) -> (Encoded | Failed, info).
        ``wait``: a batch it starts may wait ``max_wait_ms`` to fill (False: the gateway has one
        client, which sends its next request only after this reply)."""
        return await self._submit("encode", item, "batch", wait)

    async def decode(self, item: tuple, wait: bool = True) -> tuple:
        """One decode through the batch loop (``scheduling="batch"``) -> (Decoded | Failed, info);
        ``wait``: as :meth:`encode`."""
        return await self._submit("decode", item, "batch", wait)

    async def encode_step(self, item: Tuple[bytes, str]) -> tuple:
        """One encode through the step loop (``scheduling="step"``) -> (Encoded | Failed, info)."""
        return await self._submit("encode", item, "step")

    async def decode_step(self, item: tuple) -> tuple:
        """One decode through the step loop (``scheduling="step"``) -> (Decoded | Failed, info)."""
        return await self._submit("decode", item, "step")

    async def _submit(self, op: str, item: tuple, scheduling: str, wait: bool = True) -> tuple:
        if scheduling != self.scheduling:
            name = op + ("_step" if scheduling == "step" else "")
            raise RuntimeError(f"{name} needs a replica deployed with scheduling={scheduling!r}")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        self._jobs.put((op, item, fut, time.monotonic() + (self.max_wait_s if wait else 0.0)))
        return await asyncio.wrap_future(fut)

    def _batch_loop(self) -> None:
        """Batch scheduling: when the codec is free, the oldest request and the queued ones of its
        op (up to ``max_batch``, waiting up to ``max_wait_ms`` from its arrival unless its gateway
        has a lone client; the other op's set aside for the next batch:
        :func:`~gr_gdmcom.bridge.server.gather_batch`, as ``gdmcom serve`` does) run as one codec
        call per group of settings.  (Ray's ``@serve.batch`` formed each
        op's batch 10 ms after its first request, not when the codec was free: behind the other
        op's batch it stayed small.)"""
        held: collections.deque = collections.deque()
        while True:
            first = held.popleft() if held else self._jobs.get()
            batch, held = gather_batch(first, held, self._jobs, self.max_batch, first[3], lambda job: job[0])
            op = first[0]
            # a call that raises is retried in halves: only a request whose own call raises gets the
            # exception (the gateway answers it internal)
            for job, out in split_on_failure(batch, lambda part: self._run(op, [j[1] for j in part]),
                                             f"{op} batch", self._count_retry):
                _settle(job[2], out)

    def _step_loop(self) -> None:
        """Admit while the scheduler has room, then one batched UNet step over every request in
        flight (:func:`~gr_gdmcom.codec.stepper.drive`); each request's future is answered when
        its last step (and VAE call) is done."""
        from ..codec.stepper import drive

        sched = self._sched

        def submit(job):
            op, item, fut = job[:3]
            key = id(fut)  # unique while the future waits
            self._admitted[key] = self._counts()
            args, codec = self._split(op, item)
            return key, (sched.submit_encode(key, *args, codec=codec) if op == "encode" else
                         sched.submit_decode(key, *args, codec=codec))

        def answer(job, t_admit, res):
            record = getattr(res, "record", None) or {}
            counts = (self._admitted.pop(id(job[2]), (0, 0, 0)), self._counts())
            _settle(job[2], (res, dict(codec_ms=(time.monotonic() - t_admit) * 1e3, batch=record.get("batch", 0),
                                         replica=self.name, model_calls=record.get("unet_calls", 0),
                                         counts=counts)))

        def fail(jobs, exc):  # answered as the batch path's failures are: the gateway says internal
            for job in jobs:
                self._admitted.pop(id(job[2]), None)
                _settle(job[2], exc)

        drive(sched, self._jobs, submit, answer, fail, self._lock, retried=self._count_retry)

    def _split(self, op: str, item: tuple):
        """An item (encode: image, name[, settings]; decode: symbols, meta, snr_db, mask[, settings])
        -> (the codec call's arguments, the codec for its settings)."""
        n = 2 if op == "encode" else 4
        settings = item[n] if len(item) > n else None
        return item[:n], self._variants.get(self._variants.config(op, settings))

    def _run(self, op: str, items: list) -> list:
        """Batched codec calls (one per group of equal settings) -> [(Encoded | Decoded | Failed, info)]
        in the order of ``items``."""
        groups: dict = {}
        for i, item in enumerate(items):
            args, codec = self._split(op, item)
            groups.setdefault(id(codec), (codec, []))[1].append((i, args))
        out: list = [None] * len(items)
        with self._lock:
            for codec, members in groups.values():
                t0, before = time.monotonic(), self._counts()
                if op == "encode":
                    results = codec.encode_many([a[0] for _, a in members], [a[1] for _, a in members])
                else:
                    results = codec.decode_many([a for _, a in members])
                self._batches += 1
                after = self._counts()
                info = dict(codec_ms=(time.monotonic() - t0) * 1e3, batch=len(members), replica=self.name,
                            model_calls=after[1] - before[1], counts=(before, after))
                for (i, _), r in zip(members, results):
                    out[i] = (r, info)
        return out


class DeployError(RuntimeError):
    """The deployment cannot start, or did not start in time: one line saying why (``gdmcom serve``
    prints it as ``error: ...`` and exits with status 2)."""


def deploy(config: CodecConfig, ray_options: RayOptions, max_batch: int = 4, max_wait_ms: float = 10.0,
           app_name: str = APP_NAME, speed: Optional[dict] = None, warm_up_size: int = 512,
           scheduling: str = "batch"):
    """Start (or join) Ray, run the codec deployment; returns ``(handle, info, started_ray)``.

    ``speed``, ``warm_up_size`` and ``scheduling``: as :class:`CodecReplica` (every replica).

    ``info`` is :meth:`CodecReplica.info` of one replica; ``started_ray`` says whether
    this call started the Ray instance (then :func:`shutdown` stops it).

    Raises:
        DeployError: one line, after undoing what this call started: with a local Ray instance,
            a model that :func:`~gr_gdmcom.codec.models.check_model` refuses (before Ray starts)
            or more GPUs/CPUs than the instance has (before deploying; a joined cluster may grow,
            so there it is a warning); a replica that failed to start (its exception's line, a
            model that does not load as the local engine says it); a deployment not running
            after ``ray_options.start_timeout`` seconds (what is pending).
    """
    ray_options.validate()
    local = _local_instance(ray_options)
    if local:  # the replicas run on this host: the local engine's check, in seconds, before Ray starts
        from ..codec.models import ModelLoadError, check_model

        try:
            check_model(config.model)
        except ModelLoadError as exc:
            raise DeployError(str(exc)) from None
    t0 = time.monotonic()
    deadline = t0 + ray_options.start_timeout
    started = False
    if not ray.is_initialized():
        unreachable = _unreachable(ray_options.address)
        if unreachable:
            raise DeployError(f"--ray-address {ray_options.address}: {unreachable} (start one with `ray start "
                              f"--head`, or leave --ray-address out to start a local one)")
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if local:  # the instance started here inherits this environment (its Serve controller too)
            os.environ.setdefault(FORCE_STOP_ENV, "1")
        if ray_options.address is None and ray_options.metrics_port:
            kw["_metrics_export_port"] = ray_options.metrics_port
        try:
            ray.init(address=ray_options.address, **kw)
        except ConnectionError as exc:  # Ray's own words name its flag (--address), not ours
            first = (str(exc).strip().splitlines() or ["no Ray instance"])[0]
            raise DeployError(f"--ray-address {ray_options.address}: {first.split('. Please')[0]} (start one with "
                              f"`ray start --head`, or leave --ray-address out to start a local one)") from None
        started = local
    created = False
    try:
        _check_resources(ray_options, local)
        serve.start(proxy_location="Disabled")
        created = app_name not in serve.status().applications  # (one already there is not ours to delete)
        app = serve.deployment(CodecReplica, name="CodecReplica").options(
            **ray_options.deployment_options(max_batch)).bind(asdict(config), max_batch, max_wait_ms,
                                                             ray_options.torch_threads, speed, warm_up_size,
                                                             scheduling, ray_options.stall_timeout)
        (handle,) = serve.run_many([serve.RunTarget(target=app, name=app_name, route_prefix=None)],
                                   wait_for_applications_running=False)
        _wait_running(app_name, ray_options, t0, deadline)
        info = _first_info(handle, app_name, ray_options, t0, deadline)
    except BaseException:
        if started:
            ray.shutdown()
        elif created:  # (in the background: Serve gives replicas that never started 20 s to stop)
            try:
                serve.delete(app_name, _blocking=False)
            except Exception:  # noqa: BLE001 - the error that brought us here is the one to report
                log.debug("could not delete the application %r", app_name, exc_info=True)
        raise
    log.info("Ray Serve application %r: %s on %s, %s", app_name, info["model"], info["device"],
             f"{ray_options.min_replicas}-{ray_options.max_replicas} replicas (autoscaling)"
             if ray_options.max_replicas is not None else f"{ray_options.replicas} replica(s)")
    return handle, info, started


# --------------------------------------------------------------------------- why a deployment does not start
_FLAGS = {"GPU": "--gpus-per-replica", "CPU": "--cpus-per-replica"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning))(?::\s?(.*))?$")


def _host_port(address: Optional[str]) -> Optional[Tuple[str, int]]:
    """(host, port) of a ``--ray-address`` to join (``ray://HOST`` is Ray Client's port 10001);
    None for None, ``auto`` and ``local``.  ValueError for anything else."""
    if address is None or address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    hostport = address[len("ray://"):] if client else address
    host, sep, port = hostport.rpartition(":")
    if client and (not sep or hostport.endswith("]")):  # no port (an IPv6 address's colons are in brackets)
        host, port = hostport, "10001"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray-address must be auto, HOST:PORT (a cluster's GCS) or ray://HOST[:PORT] "
                         f"(Ray Client), got {address!r}")
    return host, int(port)


def _unreachable(address: Optional[str], timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Why nothing can be joined at ``address`` (``host:port``, a cluster's GCS, or
    ``ray://host:port``, Ray Client), or None: one TCP connection tried within ``timeout``
    seconds.  ``ray.init`` itself retried a GCS address nobody listens at for ever (Ray's
    warnings every 30 s) and gave up on a Ray Client one after 30 s.  ``auto``, ``local`` and
    None are Ray's to resolve (``auto`` without a cluster fails at once)."""
    where = _host_port(address)
    if where is None:
        return None
    host, port = where
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or ("timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__)
        return f"nothing answers at {host}:{port} ({why.lower()})"
    return None


def _local_instance(ro: RayOptions) -> bool:
    """Whether Ray is (or will be) an instance on this host started by the driver: its resources
    are all it will ever have, and the replicas see this host's files."""
    return ro.address is None and not os.environ.get("RAY_ADDRESS")


def _first_replicas(ro: RayOptions) -> Tuple[int, str]:
    """Replicas the deployment needs before it serves, and how the command line asked for them."""
    if ro.max_replicas is None:
        return ro.replicas, f"--replicas {ro.replicas}"
    if ro.min_replicas is None:
        return 1, "--min-replicas 1 (the default)"
    if ro.min_replicas == 0:
        return 1, "1 replica (--min-replicas 0 starts one at the first request)"
    return ro.min_replicas, f"--min-replicas {ro.min_replicas}"


def _asks(ro: RayOptions) -> Dict[str, float]:
    return {r: a for r, a in (("GPU", ro.gpus_per_replica), ("CPU", ro.cpus_per_replica)) if a > 0}


def _amount(x: float, unit: str) -> str:
    return f"{x:g} {unit}" + ("" if x == 1 else "s")


def _replicas_fit(asks: Dict[str, float], nodes: List[dict]) -> float:
    """How many replicas asking ``asks`` the ``nodes`` (resource totals each) hold: one replica's ask
    must fit on one node."""
    if not asks:
        return math.inf
    return sum(min(math.floor(node.get(r, 0.0) / a + 1e-9) for r, a in asks.items()) for node in nodes)


def resource_shortage(ro: RayOptions, nodes: List[dict], local: bool = True) -> Optional[str]:
    """Why ``nodes`` (each a dict of resource totals, as ``ray.nodes()``'s ``Resources``) cannot hold
    the replicas the deployment starts with (``--replicas``, or ``--min-replicas`` and at least one),
    in one line; None when they can.  ``local``: the nodes are a local instance of this host."""
    n, label = _first_replicas(ro)
    asks = _asks(ro)
    for r, a in asks.items():
        have = sum(node.get(r, 0.0) for node in nodes)
        if n * a > have + 1e-9:
            where = (f"the local Ray instance has {have:g} (the {r}s Ray finds on this host; ask for fewer or "
                     f"join a cluster with --ray-address)" if local else
                     f"the Ray cluster has {have:g} now (ray status lists them)")
            return f"{label} x {_FLAGS[r]} {a:g} needs {_amount(n * a, r)}; {where}"
    fits = _replicas_fit(asks, nodes)
    if fits < n:
        most = ", ".join(f"{max([node.get(r, 0.0) for node in nodes] or [0]):g} {r}" for r in asks)
        return (f"{label} x {' and '.join(f'{_FLAGS[r]} {a:g}' for r, a in asks.items())}: the Ray "
                f"{'instance' if local else 'cluster'} holds {fits} such replicas (each must fit on one node; "
                f"the most one node has: {most}; ray status lists them)")
    return None


def _check_resources(ro: RayOptions, local: bool) -> None:
    """Compare what the replicas ask with what the Ray cluster has, before deploying: a local
    instance that cannot hold them is a :class:`DeployError`; a joined cluster may grow (an
    autoscaler), so there it is a warning and :func:`_wait_running` bounds the wait."""
    asks = _asks(ro)
    if not asks:
        return
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive", True)]
    except Exception:  # noqa: BLE001 - a cluster that does not list its nodes: the bounded wait still applies
        log.debug("could not list the Ray cluster's nodes", exc_info=True)
        return
    short = resource_shortage(ro, nodes, local)
    if short and local:
        raise DeployError(short)
    if short:
        log.warning("%s: waiting up to %g s (--ray-start-timeout) for the cluster to add them (an autoscaler)",
                    short, ro.start_timeout)
    elif ro.max_replicas is not None and _replicas_fit(asks, nodes) < ro.max_replicas:
        log.warning("--max-replicas %d: the Ray %s holds %d replicas of %s; autoscaling stops there%s",
                    ro.max_replicas, "instance" if local else "cluster", _replicas_fit(asks, nodes),
                    ", ".join(f"{a:g} {r}" for r, a in asks.items()), "" if local else " unless the cluster grows")


def _exception_line(text: str) -> Tuple[Optional[str], str]:
    """A traceback's (as Serve reports a replica's) exception -> (its class's short name, its
    message's first line); (None, the text's first line) when it has none."""
    lines = [ln.strip() for ln in _ANSI.sub("", text or "").splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        m = _EXC_LINE.match(lines[i])
        if m and not lines[i].startswith("RuntimeError: Traceback"):
            return m.group(1), (m.group(2) or "").strip()
    return None, lines[0] if lines else ""


def _serve_says(text: str, most: int = 400) -> str:
    """Serve's status message in one line (a traceback: its first line and its exception's)."""
    lines = [ln.strip() for ln in _ANSI.sub("", text or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    kind, exc = _exception_line(text)
    line = lines[0] + (f" {kind}: {exc}" if kind and len(lines) > 1 else "")
    return line if len(line) <= most else line[:most - 3] + "..."


def _failure(app_name: str, app) -> str:
    """A failed deployment's reason in one line: a replica's :class:`ModelLoadError` as the local
    engine says it; another exception as its class and message."""
    for name, d in app.deployments.items():
        if not d.message:
            continue
        kind, text = _exception_line(d.message)
        if kind == "ModelLoadError":
            return text
        if kind:
            return f"a replica of the Ray Serve deployment {name} failed to start: {kind}: {text}"
        return f"the Ray Serve deployment {name} failed: {_serve_says(d.message)}"
    return f"the Ray Serve application {app_name!r} failed: {_serve_says(app.message) or app.status}"


def _pending(app_name: str, ro: RayOptions) -> str:
    """What the deployment waits for, in one line: replicas by state, Serve's message, and what
    each replica asks against what the cluster has free."""
    parts = []
    app = serve.status().applications.get(app_name)
    n, _ = _first_replicas(ro)
    if app is None:
        parts.append(f"the application {app_name!r} is not created yet")
    for name, d in (app.deployments.items() if app is not None else ()):
        states = {getattr(k, "value", str(k)).lower(): v for k, v in d.replica_states.items() if v}
        running = states.pop("running", 0)
        parts.append(f"{name}: {running} of {n} replicas running" +
                     "".join(f", {v} {k}" for k, v in sorted(states.items())))
        if d.message:
            parts.append(f"Serve says: {_serve_says(d.message)}")
    asks = _asks(ro)
    if asks:
        try:
            free, total = ray.available_resources(), ray.cluster_resources()
            have = ", ".join(f"{free.get(r, 0.0):g} of {total.get(r, 0.0):g} {r}" for r in asks)
            parts.append(f"each replica asks {', '.join(f'{a:g} {r}' for r, a in asks.items())}; "
                         f"free in the cluster now: {have}")
        except Exception:  # noqa: BLE001 - the rest of the line still says what is pending
            log.debug("could not read the Ray cluster's resources", exc_info=True)
    return "; ".join(parts)


def _not_started(app_name: str, ro: RayOptions) -> str:
    return (f"the Ray Serve deployment is not running after {ro.start_timeout:g} s (--ray-start-timeout): "
            f"{_pending(app_name, ro)}")


def _wait_running(app_name: str, ro: RayOptions, t0: float, deadline: float) -> None:
    """Until the application runs: its failure or the deadline is a :class:`DeployError`; a line
    every ``PROGRESS_EVERY_S`` says what it waits for."""
    from ray.serve.schema import ApplicationStatus

    next_line = t0 + PROGRESS_EVERY_S
    while True:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            raise DeployError(_failure(app_name, app))
        now = time.monotonic()
        if now >= deadline:
            raise DeployError(_not_started(app_name, ro))
        if now >= next_line:
            log.warning("waiting for the Ray Serve deployment to run (%.0f s of %g s, --ray-start-timeout): %s",
                        now - t0, ro.start_timeout, _pending(app_name, ro))
            next_line = now + PROGRESS_EVERY_S
        time.sleep(POLL_S)


def _first_info(handle, app_name: str, ro: RayOptions, t0: float, deadline: float) -> dict:
    """:meth:`CodecReplica.info` of a replica, within the deadline (``--min-replicas 0``: the call
    starts the first replica; a line every ``PROGRESS_EVERY_S`` while it waits)."""
    response = handle.info.remote()
    while True:
        now = time.monotonic()
        try:
            return response.result(timeout_s=max(0.1, min(PROGRESS_EVERY_S, deadline - now)))
        except (TimeoutError, ray.exceptions.GetTimeoutError):
            now = time.monotonic()
            if now >= deadline:
                raise DeployError(_not_started(app_name, ro)) from None
            log.warning("waiting for a replica to answer (%.0f s of %g s, --ray-start-timeout): %s", now - t0,
                        ro.start_timeout, _pending(app_name, ro))


def shutdown(app_name: str = APP_NAME, started_ray: bool = True) -> None:
    """Stop the local Ray instance if :func:`deploy` started it (its replicas with it); else
    delete the application from the cluster that was joined."""
    if started_ray:
        ray.shutdown()  # stops the processes this driver started; never waits on a cluster already gone
    else:
        serve.delete(app_name)


def replica_actor_names(app_name: str = APP_NAME) -> List[str]:
    """Names of the live replica actors of ``app_name`` (namespace ``serve``), e.g. to ``ray.kill`` one."""
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{app_name}#"))


class RayGateway(InferenceServer):
    """Protocol v1 in front of a Ray Serve codec deployment (see the module docstring).

    Args:
        handle: the deployment handle from :func:`deploy`; info: its ``info``.
        bind, connect, options, context, curve: as :class:`InferenceServer`.
        ray_options: :class:`RayOptions` (``max_inflight``, ``attempts``, replica counts for ``status``).
    """

    def __init__(self, handle, info: dict, bind: Optional[str] = "tcp://127.0.0.1:0", *,
                 ray_options: Optional[RayOptions] = None, **kw):
        self.handle, self.info = handle, info
        self.ray_options = (ray_options or RayOptions()).validate()
        super().__init__(None, bind, **kw)
        n = self.ray_options.max_inflight or INFLIGHT_BATCHES * self.options.max_batch * self.ray_options.most_replicas
        self.max_inflight = int(n)
        self._slots = threading.BoundedSemaphore(self.max_inflight)
        self._pool = ThreadPoolExecutor(self.max_inflight, thread_name_prefix="gdmcom-ray")
        self._count = threading.Lock()  # counters are bumped from the pool's threads
        self.counters["resubmitted"] = 0
        self._replica_counts: dict = {}  # replica -> (its REPLICA_COUNTS at its first reply's start, latest)
        step = info.get("scheduling", "batch") == "step"  # the replicas schedule; the gateway only forwards
        self._methods = {op: f"{op}_step" if step else op for op in ("encode", "decode")}
        self.options = dataclasses.replace(self.options, scheduling="step" if step else "batch")

    # ------------------------------------------------------------------ InferenceServer hooks
    def _make_limits(self) -> P.Limits:
        return dataclasses.replace(P.Limits(**self.info["limits"]), max_request_bytes=self.options.max_request_bytes)

    def _describe(self) -> str:
        return f"{self.info['model']} on Ray Serve ({self.info['device']} replicas)"

    def _codec_config(self) -> CodecConfig:
        if getattr(self, "_config", None) is None:  # (fields a replica of another version adds: not ours)
            ours = {f.name for f in dataclasses.fields(CodecConfig)}
            self._config = CodecConfig(**{k: v for k, v in self.info["config"].items() if k in ours})
        return self._config

    def _engine_status(self) -> dict:
        o = self.ray_options
        return dict(model=self.info["model"], model_hash=self.info.get("model_hash", 0), device=self.info["device"],
                    dtype=self.info["dtype"],
                    config=self.info["config"], speed=self.info.get("speed", {}), engine="ray",
                    max_inflight=self.max_inflight,
                    replicas=dict(fixed=None if o.max_replicas is not None else o.replicas, min=o.min_replicas,
                                  max=o.max_replicas, gpus_each=o.gpus_per_replica),
                    health=dict(period_s=o.health_period, timeout_s=o.health_timeout,
                                stall_s=self.info.get("stall_bound_s")))

    def _step_loop(self) -> None:
        """Step-level scheduling runs in the replicas (``encode_step``/``decode_step``): the gateway
        forwards requests the same way whatever the scheduling."""
        self._worker_loop()

    def _worker_loop(self) -> None:
        """Hand queued jobs to the deployment, at most ``max_inflight`` at a time."""
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            while not self._slots.acquire(timeout=0.1):
                if self._stopping.is_set():
                    self._post(job, self._unavailable(job.req), "unavailable")
                    job = None
                    break
            if job is not None:
                self._pool.submit(self._run_remote, job)
        self._pool.shutdown(wait=True)  # the I/O thread delivers their replies (within drain_timeout_s)

    def _count_replica(self, info: dict) -> None:
        """``batches``/``model_calls``/``batch_retries`` = what each replica ran from the start of the
        first request this gateway saw it serve to the end of the latest (replicas count; a restarted
        one is new)."""
        if "counts" not in info:
            return
        before, after = info["counts"]
        first, last = self._replica_counts.setdefault(info["replica"], (list(before), list(after)))
        first[:] = map(min, first, before)
        last[:] = map(max, last, after)
        for i, key in enumerate(REPLICA_COUNTS):
            self.counters[key] = sum(b[i] - a[i] for a, b in self._replica_counts.values())

    # ------------------------------------------------------------------ one request
    def _failure_text(self, exc: BaseException) -> str:
        """The ``internal`` reply's message: a request whose replicas died under it on every try (a
        request that hangs each replica it reaches, until Serve replaces it) says so in one line."""
        first = (str(exc).strip().splitlines() or [""])[0]
        if isinstance(exc, REPLICA_FAILURES):
            return (f"{type(exc).__name__}: the replica serving this request died under it on each of "
                    f"{self.ray_options.attempts} tries (crashed, killed, or replaced after failing its health "
                    f"checks: hung or stalled); last: {first}")
        return f"{type(exc).__name__}: {exc}"

    def _run_remote(self, job) -> None:
        op, req = job.req.op, job.req
        args = (req.image, req.name) if op == "encode" else (np.array(req.symbols), req.meta, req.snr_db, req.mask)
        if req.settings:
            args += (dict(req.settings),)
        t0 = time.monotonic()
        try:
            for attempt in range(1, self.ray_options.attempts + 1):
                try:
                    call = getattr(self.handle, self._methods[op])
                    # a lone client sends its next request only after this reply: no batch to wait for
                    kw = {} if self._methods[op].endswith("_step") else dict(wait=self._active_peers > 1)
                    res, info = call.remote(args, **kw).result()
                    break
                except REPLICA_FAILURES as exc:
                    if attempt == self.ray_options.attempts:
                        raise
                    if job.expires is not None and time.monotonic() >= job.expires:  # its client stopped waiting
                        log.warning("%s %s: replica failed (%s); not sent again: its deadline_ms has passed", op,
                                    job.id, type(exc).__name__)
                        with self._count:
                            self._expire(job, "not sent again after its replica failed, {s:.1f} s after it came")
                        self._slots.release()
                        return
                    with self._count:
                        self.counters["resubmitted"] += 1
                    log.warning("%s %s: replica failed (%s); sending it again (attempt %d of %d)", op, job.id,
                                type(exc).__name__, attempt + 1, self.ray_options.attempts)
                    time.sleep(RESUBMIT_DELAY_S * attempt)  # let the router learn that the replica is gone
        except Exception as exc:
            log.exception("%s request %s failed on the deployment", op, job.id)
            with self._count:
                self.counters["failed"] += 1
            self._slots.release()
            self._post(job, P.error_reply(job.id, op, P.INTERNAL, self._failure_text(exc)), "failed")
            return
        self._slots.release()
        t1 = time.monotonic()
        self._batch_ms = 0.8 * self._batch_ms + 0.2 * (t1 - t0) * 1e3
        self.metrics.observe_batch(op, info["batch"])
        with self._count:
            self._count_replica(info)
            frames, kind = self._result_reply(job, res, dict(queue_ms=(t0 - job.t_recv) * 1e3,
                                                             codec_ms=info["codec_ms"], batch=info["batch"],
                                                             replica=info["replica"], gateway_ms=(t1 - t0) * 1e3))
        self._post(job, frames, kind)
