"""``gdmcom calibrate``: measure the step rule on the user's images with this model.

For every SNR of a grid, every N in ``k + m .. T`` and both rescale settings,
the images go through the codec at the latent level exactly as
:mod:`gr_gdmcom.eval.validate` runs it (:class:`LatentLink`: the codec's own
inversion, symbol mapping, numpy AWGN channel, receiver inversion and sampling),
are decoded by the VAE and scored against the originals.  The N minimising the
mean metric (PSNR: maximising) per SNR, for the rescale setting that is better
over the grid, is fitted by a monotone curve against the latent SNR
(:mod:`gr_gdmcom.codec.calibration`) and written with its provenance.

Cost: ``(T - k - m + 1) * 2`` sampling runs per SNR and image (about 80 x 20
UNet calls with the defaults): minutes per image and SNR grid on a GPU with SD
1.5, seconds with ``--model analytic``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ..codec.calibration import METRICS, Calibration, fit_points
from ..codec.images import load_rgb, to_tensor, to_uint8
from ..config import CodecConfig
from .validate import LatentLink

DEFAULT_SNRS = tuple(float(s) for s in range(0, 21, 2))


@dataclass
class CalibrateOptions:
    """What to calibrate on.

    Attributes:
        images: image paths (decoded with the codec's loader; equal sizes share model calls).
        samples: with an analytic model and no images, latents drawn from its prior
            (conditional on the prompt) -- reference images are their decodings.
        metric: ``mse`` (pixels in [0, 1]), ``psnr`` or ``lpips`` (needs the ``metrics`` extra).
        snrs: Es/N0 grid in dB.
        seed: seeds the prior samples; the channel noise uses ``CodecConfig.seed``.
        chunk: latents per batched sampling run (None: ``batch_size``, or 4096 for analytic).
        progress: print one line per SNR.
    """

    images: Sequence[str] = ()
    samples: int = 0
    metric: str = "mse"
    snrs: Sequence[float] = DEFAULT_SNRS
    seed: int = 0
    chunk: Optional[int] = None
    progress: bool = False


def _scorer(metric: str, device) -> Callable[[np.ndarray, np.ndarray], float]:
    """Per-image loss to minimise (PSNR negated)."""
    if metric == "mse":
        return lambda ref, img: float(np.mean((ref.astype(np.float64) / 255 - img.astype(np.float64) / 255) ** 2))
    if metric == "psnr":
        from .metrics import psnr
        return lambda ref, img: -psnr(ref, img)
    if metric == "lpips":
        from .learned import LearnedMetrics
        lm = LearnedMetrics(["lpips"], device=str(device))
        if not lm.available("lpips"):
            raise ValueError(f"metric lpips is not available here: {lm.availability()['lpips'].reason}")
        return lambda ref, img: lm.score(ref, img)["lpips"]
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def _sources(link: LatentLink, opts: CalibrateOptions) -> tuple:
    """[(z0 (B, C, h, w), reference uint8 images, names)] per image size, and the provenance label."""
    codec = link.codec
    c = codec.c
    if opts.images:
        groups: dict = {}
        for path in opts.images:
            img = load_rgb(path, codec.config.max_pixels)
            groups.setdefault(to_tensor(img).shape, []).append((str(path), img))
        out = []
        for members in groups.values():
            with torch.no_grad():
                x = torch.cat([to_tensor(img) for _, img in members]).to(c.device, c.dtype)
                z0 = c.vae.encode(x).latent_dist.mode().float() * c.vae_scale
            refs = [np.asarray(img) for _, img in members]
            out.append((z0, refs, [p for p, _ in members]))
        return out, [p for p, _ in (m for g in groups.values() for m in g)]
    from ..codec.analytic import build_analytic, is_analytic

    if not is_analytic(codec.config.model) or opts.samples < 2:
        raise ValueError("gdmcom calibrate needs --images (or, with --model analytic, --samples n >= 2)")
    z0 = build_analytic(codec.config.model).sample_latents(opts.samples, codec.config.prompt, seed=opts.seed)
    refs = _decode(codec, z0, [tuple(8 * v for v in z0.shape[2:])] * z0.shape[0])
    names = [f"prior{i}" for i in range(z0.shape[0])]
    return [(z0, refs, names)], [f"analytic prior: {opts.samples} latents, seed {opts.seed}"]


@torch.no_grad()
def _decode(codec, z: torch.Tensor, sizes) -> List[np.ndarray]:
    c = codec.c
    out = []
    for i in range(0, z.shape[0], codec.config.batch_size):
        x = c.vae.decode((z[i:i + codec.config.batch_size] / c.vae_scale).to(c.device, c.dtype)).sample.float()
        out += [to_uint8(x[b], sizes[i + b]) for b in range(x.shape[0])]
    return out


def calibrate(config: CodecConfig, opts: CalibrateOptions, components=None) -> Calibration:
    """Measure the metric for every (SNR, rescale, N) and fit the calibrated rule.

    Args:
        config: the codec settings the calibration is for (``rule``/``steps`` are ignored).
        opts: images or prior samples, metric and SNR grid.
        components: loaded model components (else loaded from ``config.model``).
    Returns:
        the :class:`Calibration` (save it with ``.save(path)``).
    """
    from ..codec import load_components
    from ..codec.analytic import is_analytic

    config = config.replace(rule="snr", steps=None).validate()
    if config.reduce > 1:
        raise ValueError(f"calibrate measures the whole latent: a reduced one (reduce {config.reduce}) is decoded "
                         f"by the snr rule with m = 0 whatever a calibration says (docs/rate.md)")
    if components is None:
        components = load_components(config.model, config.device, config.dtype)
    link = LatentLink(components, config)
    codec = link.codec
    score = _scorer(opts.metric, codec.c.device)
    sources, provenance = _sources(link, opts)
    k, m, T = config.k, config.m, config.T
    Ns = list(range(k + m, T + 1))
    chunk = opts.chunk or (4096 if is_analytic(config.model) else config.batch_size)
    t0 = time.perf_counter()
    # 1. transmit once per image group (the channel noise is drawn per SNR)
    txs = []
    for z0, refs, names in sources:
        tx = link.transmit(link.forward(z0, k), k)
        for t, name, ref in zip(tx, names, refs):
            t.meta.name = name  # per-image channel noise streams (sim.channel_rng seeds by name)
            t.meta.image_size = tuple(ref.shape[:2])  # decoded images are cropped back to the original size
        txs.append(tx)
    powers_db = [10 * math.log10(t.meta.power) for tx in txs for t in tx]
    points = []
    for s in opts.snrs:
        loss = {True: np.zeros(len(Ns)), False: np.zeros(len(Ns))}
        for (z0, refs, names), tx in zip(sources, txs):
            B = z0.shape[0]
            metas = [t.meta for t in tx]
            # 2. receiver: channel, de-normalisation, m inversion steps
            zkm = link.invert(link.receive(tx, s), k, m)
            # 3. every (rescale, N) as one list of sampling jobs, run in chunks
            jobs = [(r, j, b) for r in (True, False) for j in range(len(Ns)) for b in range(B)]
            chs = {(r, j): link.choices(s, metas, steps=Ns[j], rescale=r) for r in (True, False)
                   for j in range(len(Ns))}
            for i in range(0, len(jobs), chunk):
                part = jobs[i:i + chunk]
                out = link.denoise(torch.stack([zkm[b] for _, _, b in part]), [chs[(r, j)][b] for r, j, b in part])
                imgs = _decode(codec, out, [metas[b].image_size for _, _, b in part])
                for (r, j, b), img in zip(part, imgs):
                    loss[r][j] += score(refs[b], img)
        n_items = sum(len(tx) for tx in txs)
        mean = {r: loss[r] / n_items for r in loss}
        if opts.metric == "psnr":
            mean = {r: -v for r, v in mean.items()}  # report PSNR itself
        pick = (np.argmax if opts.metric == "psnr" else np.argmin)
        points.append(dict(snr_db=float(s), x=float(s) - float(np.mean(powers_db)),
                           n_opt=Ns[int(pick(mean[True]))], n_opt_no_rescale=Ns[int(pick(mean[False]))],
                           metric=[float(v) for v in mean[True]], metric_no_rescale=[float(v) for v in mean[False]]))
        if opts.progress:
            print(f"[calibrate {time.perf_counter() - t0:6.1f}s] {s:g} dB: N = {points[-1]['n_opt']} "
                  f"(no rescale {points[-1]['n_opt_no_rescale']})", flush=True)
    # 4. the rescale family with the better metric at its per-SNR optima, and its monotone fit
    sign = -1.0 if opts.metric == "psnr" else 1.0
    best = {r: sum(sign * p[key][Ns.index(p[n])] for p in points)
            for r, key, n in ((True, "metric", "n_opt"), (False, "metric_no_rescale", "n_opt_no_rescale"))}
    rescale = best[True] <= best[False]
    fit_x, fit_n = fit_points(points, "n_opt" if rescale else "n_opt_no_rescale")
    return Calibration(model=components.model_id, k=k, m=m, T=T, guidance=config.guidance, prompt=config.prompt,
                       clean_end=config.clean_end, inversion=config.inversion, inversion_iters=config.inversion_iters,
                       metric=opts.metric, images=provenance, rescale=bool(rescale), points=points, fit_x=fit_x,
                       fit_n=fit_n, seed=config.seed)
