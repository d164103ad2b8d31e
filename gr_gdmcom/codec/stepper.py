"""Step-level (in-flight) scheduling of many requests over one codec.

A request is a sequence of UNet steps, each ``(t_eval, a_from, a_to)`` as in
:meth:`GenerativeCodec._ddim`: an encode is a VAE encode, then its ``k``
inversion steps; a decode is its ``m`` inversion steps, the rescaling, its
``N`` sampling steps, then a VAE decode.  :meth:`StepScheduler.step` runs ONE
batched UNet call over the current step of every active request (each with
its own timestep: ``_ddim`` with one-step paths), admitted requests join at
the next call and finished ones leave at once.  A batch-at-a-time server
holds a new request back until the whole batch (its longest path) is done,
and runs partial batches while paths of different ``N`` are aligned; here the
batch stays full while there is work.

Requests share a call when their latent shape, prompt and guidance agree (the
UNet call takes one prompt); otherwise the group of the oldest request runs
first.  Outputs equal a single-request ``encode``/``decode`` within float
tolerance (only the batch composition of the UNet and VAE calls differs).

Requests the step model does not cover run whole, batch-at-a-time, when
submitted: ``forward="random"`` encodes (no UNet step) and a codec whose
``config.inversion`` is not ``ddim`` (the fixed-point inversion solves each
step with several UNet calls).
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

from .core import CodecError, Decoded, Failed, GenerativeCodec, to_device
from .images import ImageError, load_rgb, to_tensor, to_uint8
from .schedule import sampling_path

log = logging.getLogger(__name__)


@dataclass
class _Active:
    """One request between admission and its last UNet step."""

    key: Any
    x: torch.Tensor  # (1, C, h, w) float32, the current latent
    phases: List[Tuple[Optional[float], list]]  # (scale applied on entering, steps)
    group: tuple  # (latent shape, prompt, guidance): who may share a UNet call
    finish: Callable[[torch.Tensor, "_Active"], Any]
    t_admit: float
    decode: bool = False
    phase: int = 0
    pos: int = 0
    calls: int = 0  # batched UNet calls this request took part in
    widths: List[int] = field(default_factory=list)  # batch size of each of them

    def settle(self) -> None:
        """Move past finished phases (applying each new phase's scale); ``done`` after the last."""
        while self.phase < len(self.phases) and self.pos >= len(self.phases[self.phase][1]):
            self.phase += 1
            self.pos = 0
            if self.phase < len(self.phases) and self.phases[self.phase][0] is not None:
                # as _decode_batch: z * scale before sampling (a Python scale: no copy to the device)
                self.x = self.x * float(self.phases[self.phase][0])

    @property
    def done(self) -> bool:
        return self.phase >= len(self.phases)

    @property
    def current(self) -> tuple:
        return self.phases[self.phase][1][self.pos]


class StepScheduler:
    """Step-level batching over one :class:`GenerativeCodec` (not thread-safe: one caller).

    ``submit_encode`` / ``submit_decode`` admit a request under a caller's ``key``
    and return its result at once when it needs no UNet step (bad input,
    fallback, ``k = 0``), else None.  ``step()`` runs one batched UNet call and
    returns ``[(key, Encoded | Decoded | Failed)]`` of the requests it finished.

    Args:
        codec: the codec whose model, grid and helpers are used.
        max_batch: most requests active at once (= largest UNet batch, x2 with guidance).
    """

    def __init__(self, codec: GenerativeCodec, max_batch: int = 4):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.codec = codec
        self.max_batch = int(max_batch)
        self.active: List[_Active] = []
        self.stats = dict(iterations=0, unet_items=0, fallbacks=0)

    @property
    def free(self) -> int:
        """How many more requests can be admitted now."""
        return self.max_batch - len(self.active)

    @property
    def stepwise(self) -> bool:
        """Whether this codec's steps are single UNet calls (else requests fall back to batch-at-a-time)."""
        cfg = self.codec.config
        return getattr(cfg, "inversion", "ddim") == "ddim" and getattr(cfg, "reduce", 1) == 1

    # ------------------------------------------------------------------ admission
    @torch.no_grad()
    def submit_encode(self, key, image, name: Optional[str] = None, codec: Optional[GenerativeCodec] = None):
        """``codec``: a codec over the same model with this request's own settings (its
        ``k``; :class:`~gr_gdmcom.bridge.backend.CodecVariants`), None: the scheduler's."""
        codec = codec or self.codec
        cfg, c = codec.config, codec.c
        name = name or "image"
        if cfg.forward != "ddim" or not self.stepwise:
            self.stats["fallbacks"] += 1
            return codec.encode_many([image], [name])[0]
        try:
            img = load_rgb(image, cfg.max_pixels, name)
        except ImageError as exc:
            codec.stats["failures"] += 1
            return Failed(str(exc), name, "image")
        t0 = time.perf_counter()
        z0 = c.vae.encode(to_device(to_tensor(img), c.device).to(c.dtype)).latent_dist.mode().float() * c.vae_scale
        t_vae = time.perf_counter() - t0

        def finish(x, req):
            enc = codec._encoded(x[0].cpu().numpy(), img, name)
            enc.record = dict(unet_calls=req.calls, batch=_mean_width(req), batch_unet_calls=req.calls,
                              scheduling="step",
                              seconds=dict(vae_encode=t_vae, total=time.perf_counter() - t0),
                              symbols=int(enc.symbols.size),
                              bcr=enc.symbols.size / (3 * enc.meta.image_size[0] * enc.meta.image_size[1]))
            codec.stats["images_encoded"] += 1
            return enc

        return self._admit(key, z0, [(None, codec.inversion_path(0, cfg.k))], (cfg.prompt, cfg.guidance), finish)

    @torch.no_grad()
    def submit_decode(self, key, symbols, meta, snr_db, mask=None, noise_var=None,
                      codec: Optional[GenerativeCodec] = None):
        """``codec``: as :meth:`submit_encode` (its ``m``, step rule, ``steps``, ``rescale``)."""
        codec = codec or self.codec
        cfg = codec.config
        if not self.stepwise or getattr(meta, "reduce", 1) > 1:  # a reduced latent is sampled from the top
            self.stats["fallbacks"] += 1
            return codec.decode_many([(symbols, meta, snr_db, mask, noise_var)])[0]
        try:
            z, meta, snr, choice, mask, snr_in = codec._prepare_decode((symbols, meta, snr_db, mask, noise_var))
        except CodecError as exc:
            codec.stats["failures"] += 1
            return Failed(str(exc), getattr(meta, "name", "image"))
        t0 = time.perf_counter()
        phases = [(None, codec.inversion_path(meta.k, meta.k + cfg.m)),
                  (choice.scale, sampling_path(choice, codec.grid))]

        def finish(x, req):
            img = to_uint8(x[0], meta.image_size)
            codec.stats["images_decoded"] += 1
            rec = codec._decode_record(meta, snr, snr_in, choice, mask, cfg.m, _mean_width(req), req.calls,
                                       dict(total=time.perf_counter() - t0))
            return Decoded(img, dict(rec, scheduling="step"))

        x = to_device(torch.from_numpy(z[None]), codec.c.device)
        return self._admit(key, x, phases, (meta.prompt, meta.guidance), finish, decode=True)

    def _admit(self, key, x, phases, cond, finish, decode: bool = False):
        if self.free <= 0:
            raise RuntimeError(f"scheduler full ({self.max_batch} active requests): admit when free > 0")
        req = _Active(key, x.float(), phases, (tuple(x.shape), *cond), finish, time.monotonic(), decode)
        req.settle()
        if req.done:  # no UNet step at all (k = 0)
            return self._finish([req])[0][1]
        self.active.append(req)
        return None

    # ------------------------------------------------------------------ iteration
    @torch.no_grad()
    def step(self) -> List[Tuple[Any, Any]]:
        """One batched UNet call over the current step of the oldest request's group."""
        if not self.active:
            return []
        head = self.active[0]
        members = [r for r in self.active if r.group == head.group]
        x = torch.cat([r.x for r in members])
        x = self.codec._ddim(x, [[r.current] for r in members], head.group[1], head.group[2])
        self.stats["iterations"] += 1
        self.stats["unet_items"] += len(members)
        for b, r in enumerate(members):
            r.x = x[b:b + 1]
            r.pos += 1
            r.calls += 1
            r.widths.append(len(members))
            r.settle()
        finished = [r for r in self.active if r.done]
        self.active = [r for r in self.active if not r.done]
        return self._finish(finished)

    def _finish(self, reqs: List[_Active]) -> List[Tuple[Any, Any]]:
        """Results of finished requests; decodes of one latent shape share one VAE call."""
        c = self.codec.c
        out = []
        decodes = [r for r in reqs if r.decode]
        by_shape: dict = {}
        for r in decodes:
            by_shape.setdefault(tuple(r.x.shape), []).append(r)
        pixels = {}
        for group in by_shape.values():
            z0 = torch.cat([r.x for r in group])
            x = c.vae.decode((z0 / c.vae_scale).to(c.dtype)).sample.float()
            for b, r in enumerate(group):
                pixels[id(r)] = x[b:b + 1]
        for r in reqs:
            try:
                out.append((r.key, r.finish(pixels[id(r)] if r.decode else r.x, r)))
            except (CodecError, ImageError) as exc:  # pragma: no cover - checked at admission
                out.append((r.key, Failed(str(exc))))
        return out


def drive(sched: StepScheduler, jobs: "queue.Queue", submit: Callable[[Any], Tuple[Any, Any]],
          answer: Callable[[Any, float, Any], None], fail: Callable[[list, Exception], None], lock,
          stopping: Callable[[], bool] = lambda: False,
          after_step: Optional[Callable[[int, int, float], None]] = None,
          retried: Callable[[], None] = lambda: None) -> None:
    """Serve requests through ``sched`` until ``stopping()`` and nothing is in flight (the loop of
    ``gdmcom serve --scheduling step`` and of a Ray replica's step loop).

    Each pass admits jobs from ``jobs`` while the scheduler has room (waiting up to 0.1 s for one
    only when there is nothing to step) -- ``submit(job)`` -> ``(key, result or None)`` run
    under ``lock`` (None: the request needs UNet steps) -- then runs one batched UNet step under
    ``lock``.  ``answer(job, t_admit, result)`` gets every finished request; ``fail(jobs, exc)``
    the requests whose admission or step raised; ``after_step(width, unet_calls, seconds)`` each
    step's figures.

    A step that raises with more than one request in flight does not fail them all: ``retried()``
    is called, the CUDA cache is freed after an out-of-memory error, and each of those requests
    runs again alone from its start (submitted again and stepped to its end, new requests waiting
    meanwhile), answered with its own result or, when its own run raises, ``fail([job], exc)``.
    A step that raises with one request in flight fails that request.
    """
    pending: dict = {}  # key -> (job, time admitted): the requests in flight, not yet answered
    while not stopping() or sched.active:  # on stop, requests in flight are finished
        while sched.free > 0 and not stopping():
            try:
                job = jobs.get_nowait() if sched.active else jobs.get(timeout=0.1)
            except queue.Empty:
                break
            t0 = time.monotonic()
            try:
                with lock:
                    key, out = submit(job)
            except Exception as exc:
                log.exception("admitting a request failed")
                fail([job], exc)
                continue
            pending[key] = (job, t0)
            if out is not None:  # answered without a UNet step (bad input, fallback, k = 0)
                answer(*pending.pop(key), out)
        if not sched.active:
            continue
        try:
            done = _step(sched, lock, after_step)
        except Exception as exc:
            # every request in flight (those the step finished before raising too) starts again or fails
            victims = [job for job, _ in pending.values()]
            pending.clear()
            sched.active.clear()
            log.exception("step over %d requests in flight failed%s", len(victims),
                          "; running each alone from its start" if len(victims) > 1 else "")
            if len(victims) == 1:
                fail(victims, exc)
                continue
            release_cuda_cache(exc)
            retried()
            for job in victims:
                _alone(sched, job, submit, answer, fail, lock, after_step)
            continue
        for key, res in done:
            answer(*pending.pop(key), res)


def _step(sched: StepScheduler, lock, after_step) -> List[Tuple[Any, Any]]:
    """One batched UNet step under ``lock``, its figures to ``after_step``; what it finished."""
    t0 = time.monotonic()
    with lock:
        calls0, width = sched.codec.stats["unet_calls"], len(sched.active)
        done = sched.step()
        calls = sched.codec.stats["unet_calls"] - calls0
    if after_step is not None:
        after_step(width, calls, time.monotonic() - t0)
    return done


def _alone(sched: StepScheduler, job, submit, answer, fail, lock, after_step) -> None:
    """Run ``job`` from its start with nothing else in flight (after a shared step failed) and answer it."""
    t0 = time.monotonic()
    try:
        with lock:
            key, out = submit(job)
        while sched.active:
            out = dict(_step(sched, lock, after_step)).get(key, out)
    except Exception as exc:
        log.warning("a request run alone after a failed step failed too: %s: %s", type(exc).__name__, exc)
        sched.active.clear()
        fail([job], exc)
        return
    answer(job, t0, out)


def release_cuda_cache(exc: BaseException) -> None:
    """After a CUDA out-of-memory error, hand the allocator's cached blocks back before a retry
    (smaller batches may then fit); a no-op for other errors and without CUDA."""
    if isinstance(exc, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mean_width(req: _Active) -> float:
    return round(float(np.mean(req.widths)), 3) if req.widths else 0.0
