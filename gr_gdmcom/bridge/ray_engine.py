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
  calls ``encode_many``/``decode_many``; with ``scheduling="step"`` the gateway calls
  ``encode_step``/``decode_step`` instead, which hand each request to the
  replica's :class:`~gr_gdmcom.codec.stepper.StepScheduler` loop (requests join
  and leave the batched UNet call at every step, as ``gdmcom serve --scheduling
  step`` does in one process).
* :func:`deploy` starts a local Ray instance (or joins ``address``: ``auto`` or
  ``ray://host:port``), runs the application with ``num_replicas`` or an
  autoscaling range and ``ray_actor_options`` (GPUs, CPUs per replica), and
  returns its handle and what a replica reports (:meth:`CodecReplica.info`).
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
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import numpy as np
import ray
import ray.exceptions
from ray import serve

from ..config import CodecConfig
from . import protocol as P
from .backend import CodecVariants
from .server import InferenceServer, gather_batch

log = logging.getLogger(__name__)

APP_NAME = "gdmcom"
RESUBMIT_DELAY_S = 0.2  # wait before the n-th re-send: n times this
#: Failures of the replica, not of the request: the gateway sends the request again.
REPLICA_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.WorkerCrashedError)


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
            host, ``ray://host:port`` a remote one (Ray Client).
        max_inflight: requests the gateway has at the deployment at once (None:
            ``INFLIGHT_BATCHES * max_batch`` per replica, at the largest replica count).
        attempts: tries of one request when its replica dies under it.
        metrics_port: Ray's own Prometheus metrics export port (local instance only; 0: off).
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
        return self

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    def deployment_options(self, max_batch: int) -> dict:
        """``Deployment.options(...)`` keyword arguments."""
        opts = dict(ray_actor_options=dict(num_gpus=self.gpus_per_replica, num_cpus=self.cpus_per_replica),
                    max_ongoing_requests=INFLIGHT_BATCHES * max_batch)
        if self.max_replicas is not None:
            opts["autoscaling_config"] = dict(min_replicas=1 if self.min_replicas is None else self.min_replicas,
                                              max_replicas=self.max_replicas,
                                              target_ongoing_requests=self.target_ongoing)
        else:
            opts["num_replicas"] = self.replicas
        return opts


def _settle(fut: concurrent.futures.Future, result=None, exc: Optional[BaseException] = None) -> None:
    """Answer a request's future unless its caller gave up on it (Serve cancelled the call: the
    future is cancelled, and answering it would raise in the replica's loop and stop it)."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
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
    """

    def __init__(self, config: dict, max_batch: int = 4, max_wait_ms: float = 10.0, torch_threads: int = 0,
                 speed: Optional[dict] = None, warm_up_size: int = 512, scheduling: str = "batch"):
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
                    pid=os.getpid())

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose codec or step loop is gone is restarted."""
        if self.codec is None:
            raise RuntimeError("codec not loaded")
        if not self._stepper.is_alive():
            raise RuntimeError(f"{self.scheduling} loop stopped")

    def _counts(self) -> Tuple[int, int]:
        """(batches, UNet calls) this replica has run so far: a request's reply carries them from
        before and after it, so the gateway can sum what the replicas did (``status``)."""
        steps = self._sched.stats["iterations"] if self._sched is not None else 0
        return self._batches + steps, int(self.codec.stats["unet_calls"])

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
            try:
                results = self._run(first[0], [job[1] for job in batch])
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it (the gateway: internal)
                log.exception("%s batch of %d failed", first[0], len(batch))
                for job in batch:
                    _settle(job[2], exc=exc)
                continue
            for job, res in zip(batch, results):
                _settle(job[2], res)

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
            counts = (self._admitted.pop(id(job[2]), (0, 0)), self._counts())
            _settle(job[2], (res, dict(codec_ms=(time.monotonic() - t_admit) * 1e3, batch=record.get("batch", 0),
                                         replica=self.name, model_calls=record.get("unet_calls", 0),
                                         counts=counts)))

        def fail(jobs, exc):  # answered as the batch path's failures are: the gateway says internal
            for job in jobs:
                self._admitted.pop(id(job[2]), None)
                _settle(job[2], exc=exc)

        drive(sched, self._jobs, submit, answer, fail, self._lock)

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


def deploy(config: CodecConfig, ray_options: RayOptions, max_batch: int = 4, max_wait_ms: float = 10.0,
           app_name: str = APP_NAME, speed: Optional[dict] = None, warm_up_size: int = 512,
           scheduling: str = "batch"):
    """Start (or join) Ray, run the codec deployment; returns ``(handle, info, started_ray)``.

    ``speed``, ``warm_up_size`` and ``scheduling``: as :class:`CodecReplica` (every replica).

    ``info`` is :meth:`CodecReplica.info` of one replica; ``started_ray`` says whether
    this call started the Ray instance (then :func:`shutdown` stops it).
    """
    ray_options.validate()
    started = False
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if ray_options.address is None and ray_options.metrics_port:
            kw["_metrics_export_port"] = ray_options.metrics_port
        ray.init(address=ray_options.address, **kw)
        started = ray_options.address is None
    serve.start(proxy_location="Disabled")
    app = serve.deployment(CodecReplica, name="CodecReplica").options(
        **ray_options.deployment_options(max_batch)).bind(asdict(config), max_batch, max_wait_ms,
                                                         ray_options.torch_threads, speed, warm_up_size,
                                                         scheduling)
    handle = serve.run(app, name=app_name, route_prefix=None)
    info = handle.info.remote().result()
    log.info("Ray Serve application %r: %s on %s, %s", app_name, info["model"], info["device"],
             f"{ray_options.min_replicas}-{ray_options.max_replicas} replicas (autoscaling)"
             if ray_options.max_replicas is not None else f"{ray_options.replicas} replica(s)")
    return handle, info, started


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
        self._replica_counts: dict = {}  # replica -> [batches, calls at its first reply's start, latest]
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
                                  max=o.max_replicas, gpus_each=o.gpus_per_replica))

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
        """``batches``/``model_calls`` = what each replica ran from the start of the first request
        this gateway saw it serve to the end of the latest (replicas count; a restarted one is new)."""
        if "counts" not in info:
            return
        (b0, c0), (b1, c1) = info["counts"]
        seen = self._replica_counts.setdefault(info["replica"], [b0, c0, b1, c1])
        seen[:] = [min(seen[0], b0), min(seen[1], c0), max(seen[2], b1), max(seen[3], c1)]
        self.counters["batches"] = sum(s[2] - s[0] for s in self._replica_counts.values())
        self.counters["model_calls"] = sum(s[3] - s[1] for s in self._replica_counts.values())

    # ------------------------------------------------------------------ one request
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
            self._post(job, P.error_reply(job.id, op, P.INTERNAL, f"{type(exc).__name__}: {exc}"), "failed")
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
