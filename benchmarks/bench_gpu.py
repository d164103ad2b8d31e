"""TX+RX images/s and peak memory vs batch size and dtype, next to diffusers' img2img pipeline.

For each dtype and batch size B: one untimed warm-up (compilation, kernel
selection), then ``--repeat`` timed rounds of ``encode_many`` of B images
followed by ``decode_many`` of their symbols through AWGN at ``--snr`` dB
(k + m + N UNet calls with classifier-free guidance, a VAE encode and a VAE
decode per image).  Printed per row:

* TX+RX images/s (B / median round time) and, at B = 1, the single-image latency;
* peak memory: ``torch.cuda.max_memory_allocated`` on CUDA (the process's peak
  RSS on CPU, which only grows);
* outside model calls: 1 - (time inside the UNet and VAE calls of one extra
  round, each call timed between two device synchronisations) / (median time
  of the free-running rounds, which have no synchronisation until the end);
* TFLOP/s: images/s times the arithmetic of one TX+RX image (the loaded UNet's and
  VAE's configs counted on the meta device, as ``--flops``); on CUDA also as a
  share of an 8192^3 matrix product's rate in the same dtype on the same card
  (its practical dense peak);
* the anchor: diffusers' ``StableDiffusionImg2ImgPipeline`` built from the same
  loaded modules and a DDIM scheduler, with ``strength`` set so that it runs the
  same number of guided UNet calls (``num_inference_steps = T``), on the same
  device, images/s and the ratio codec/img2img.  Both count their UNet calls
  and the script checks that they agree.

Defaults: CUDA -> ``--model sd15-random`` (real weights: ``--model PATH`` or a
hub id) at 512 x 512, B in 1 2 4 8, fp16 and bf16; CPU -> ``tiny`` at 64 x 64,
B in 1 2, fp32 (a smoke run, also done by the tests).

Usage::

    python benchmarks/bench_gpu.py                            # CPU smoke
    python benchmarks/bench_gpu.py --device cuda --compile --channels-last
    python benchmarks/bench_gpu.py --device cuda --model /models/sd15 --batch 1 8 16 --dtype fp16
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gr_gdmcom.codec import GenerativeCodec, load_components
from gr_gdmcom.codec.accel import apply_speed_options, warm_up
from gr_gdmcom.config import CodecConfig


class ModelClock:
    """Counts UNet calls and, while ``timing`` is on, the time inside UNet and VAE calls (with a device
    synchronisation around each, which stops the host from queueing work ahead of the GPU: so the
    throughput rounds run with ``timing`` off and one extra round is timed call by call)."""

    def __init__(self, c):
        self.device, self.calls, self.seconds, self.timing = c.device, 0, 0.0, False
        c.unet.register_forward_pre_hook(lambda *_: self._enter())
        c.unet.register_forward_hook(lambda *_: self._leave(unet=True))
        for name in ("encode", "decode"):
            setattr(c.vae, name, self._timed(getattr(c.vae, name)))

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _enter(self):
        if self.timing:
            self._sync()
            self._t = time.perf_counter()

    def _leave(self, unet=False):
        if self.timing:
            self._sync()
            self.seconds += time.perf_counter() - self._t
        self.calls += unet

    def _timed(self, fn):
        def wrapped(*a, **kw):
            self._enter()
            out = fn(*a, **kw)
            self._leave()
            return out
        return wrapped

    def reset(self):
        self.calls, self.seconds = 0, 0.0


def _peak_reset(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mib(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MiB


def _img2img(c, cfg):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer,
                                          unet=c.unet, scheduler=DDIMScheduler.from_config(c.scheduler_config),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_dtype(args, dtype, image, rows):
    c = load_components(args.model, device=args.device, dtype=dtype)
    apply_speed_options(c, attention=args.attention, channels_last=args.channels_last, compile=args.compile,
                        compile_mode=args.compile_mode, compile_vae=args.compile_vae, fuse_qkv=args.fuse_qkv,
                        inductor_tuning=args.inductor_tuning, compile_dynamic=False)  # few shapes: each static
    cfg = CodecConfig(model=args.model, device=args.device, dtype=dtype, k=args.k, m=args.m, guidance=args.guidance,
                      batch_size=max(args.batch))  # B images in one UNet call per step, as img2img does
    codec = GenerativeCodec(cfg, components=c)
    unit_flops = model_flops(c.unet.config, c.vae.config, args.size)
    mm_peak = matmul_peak(dtype) if c.device.type == "cuda" else 0.0
    if mm_peak:
        print(f"# {dtype} 8192^3 matrix product on this card: {mm_peak:.0f} TFLOP/s (the % below)", flush=True)
    clock = ModelClock(c)
    pipe = _img2img(c, cfg)
    rng = np.random.default_rng(0)
    for B in args.batch:
        imgs = [image] * B

        def round_trip():
            encs = codec.encode_many(imgs)
            items = []
            for e in encs:
                n = e.symbols.size
                noise = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * np.sqrt(10 ** (-args.snr / 10) / 2)
                items.append(((e.symbols + noise).astype(np.complex64), e.meta, args.snr))
            return codec.decode_many(items)

        t_warm = time.perf_counter()
        warm_up(codec, size=args.size, batch=B)
        print(f"# B={B}: warm-up (compilation, kernel selection) {time.perf_counter() - t_warm:.0f} s, not counted",
              flush=True)
        _peak_reset(c.device)
        times = []
        for _ in range(args.repeat):
            clock.reset()
            t0 = time.perf_counter()
            decs = round_trip()
            _sync(c.device)
            times.append(time.perf_counter() - t0)
        calls = clock.calls  # of the last round
        clock.reset()
        clock.timing = True  # one more round, each model call timed: the model's share of a free-running round
        round_trip()
        clock.timing = False
        outside = 1 - clock.seconds / statistics.median(times)
        peak = _peak_mib(c.device)
        n_calls = cfg.k + cfg.m + decs[0].record["n_steps"]
        strength = n_calls / cfg.T

        def anchor():
            return pipe(prompt=[cfg.prompt] * B, image=[Image.fromarray(image)] * B, strength=strength,
                        num_inference_steps=cfg.T, guidance_scale=cfg.guidance, eta=0.0, output_type="np").images

        if args.no_anchor:
            a_times, a_calls = [float("nan")], n_calls
        else:
            anchor()  # warm-up
            clock.reset()
            a_times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                anchor()
                _sync(c.device)
                a_times.append(time.perf_counter() - t0)
            a_calls = clock.calls // args.repeat
        if a_calls != n_calls or calls != n_calls:
            print(f"# warning: UNet calls per round codec {calls}, img2img {a_calls}, expected {n_calls}")
        t, ta = statistics.median(times), statistics.median(a_times)
        tflops = B / t * image_flops(*unit_flops, n_calls, cfg.guidance) / 1e12  # sustained, whole TX+RX
        rows.append(dict(dtype=dtype, B=B, ips=B / t, lat=t if B == 1 else None, peak=peak,
                         outside=100 * outside, calls=n_calls, a_ips=B / ta, tflops=tflops))
        r = rows[-1]
        of_peak = f"{tflops:.1f} ({100 * tflops / mm_peak:.0f}%)" if mm_peak else f"{tflops:.3f}"
        print(f"{dtype:>5} {B:>3} {r['ips']:10.2f} {('%.3f' % r['lat']) if r['lat'] else '-':>10} {peak:10.0f} "
              f"{r['outside']:8.2f} % {of_peak:>14} {n_calls:6d} {r['a_ips']:12.2f} {r['ips'] / r['a_ips']:8.2f}",
              flush=True)
    del pipe, codec, c
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()


def model_flops(unet_config: dict, vae_config: dict, size: int) -> tuple:
    """(UNet per sample and call, VAE encode, VAE decode) FLOPs at ``size`` x ``size``: the models
    built from their configs on the meta device (no memory, no weights) under
    ``torch.utils.flop_counter``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel.from_config(unet_config), AutoencoderKL.from_config(vae_config)
    h = size // 8

    def flops(fn):
        with FlopCounterMode(display=False) as f:
            fn()
        return f.get_total_flops()

    ctx = torch.zeros(1, 77, unet.config.cross_attention_dim, device="meta")
    u = flops(lambda: unet(torch.zeros(1, unet.config.in_channels, h, h, device="meta"),
                           torch.tensor([500], device="meta"), encoder_hidden_states=ctx))
    enc = flops(lambda: vae.encode(torch.zeros(1, 3, size, size, device="meta")))
    dec = flops(lambda: vae.decode(torch.zeros(1, vae.config.latent_channels, h, h, device="meta")))
    return u, enc, dec


def image_flops(u: float, enc: float, dec: float, calls: int, guidance: float) -> float:
    """FLOPs of one TX+RX image: ``calls`` UNet calls (two samples each with guidance), one VAE
    encode and one decode."""
    return calls * u * (2 if guidance != 1 else 1) + enc + dec


def matmul_peak(dtype: str) -> float:
    """TFLOP/s of an 8192^3 matrix product in ``dtype`` on the current CUDA device (the card's
    practical dense peak: what "% of peak" in the table is measured against)."""
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32)
    a = torch.randn(8192, 8192, device="cuda", dtype=dt)
    b = torch.randn(8192, 8192, device="cuda", dtype=dt)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * 10 / (time.perf_counter() - t0) / 1e12


def count_flops(args) -> int:
    """Arithmetic per TX+RX image (``--flops``) of SD-1.5; what a given images/s asks of the GPU."""
    from gr_gdmcom.codec.models import sd15_configs

    cfg = sd15_configs()
    u, enc, dec = model_flops(cfg["unet"], cfg["vae"], args.size)
    n = args.n_steps
    calls = args.k + args.m + n
    per_image = image_flops(u, enc, dec, calls, args.guidance)
    print(f"# SD-1.5 at {args.size}x{args.size}: UNet {u / 1e9:.0f} GFLOP per sample and call, VAE encode "
          f"{enc / 1e9:.0f}, decode {dec / 1e9:.0f} GFLOP")
    print(f"# k+m+N = {args.k}+{args.m}+{n} = {calls} UNet calls x {'2 (CFG)' if args.guidance != 1 else '1'}: "
          f"{per_image / 1e12:.1f} TFLOP per TX+RX image")
    for ips in (1, 5, 7, 12):
        print(f"{ips:>3} images/s need {ips * per_image / 1e12:6.0f} TFLOP/s sustained")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto: cuda when present [default=%(default)r]")
    p.add_argument("--model", default=None, help="default: sd15-random on CUDA, tiny on CPU")
    p.add_argument("--size", type=int, default=None, help="image side; default 512 on CUDA, 64 on CPU")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="default: 1 2 4 8 on CUDA, 1 2 on CPU")
    p.add_argument("--dtype", nargs="+", default=None, help="default: fp16 bf16 on CUDA, fp32 on CPU")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--m", type=int, default=5)
    p.add_argument("--snr", type=float, default=10.0, help="channel SNR, dB (sets N) [default=%(default)r]")
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per row [default=%(default)r]")
    p.add_argument("--attention", choices=("sdpa", "classic"), default="sdpa")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (warm-up compiles)")
    p.add_argument("--compile-mode", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode; reduce-overhead and max-autotune add CUDA graphs [default: default]")
    p.add_argument("--compile-vae", action="store_true", help="also compile the VAE encoder and decoder")
    p.add_argument("--fuse-qkv", action="store_true", help="diffusers' fused QKV projections")
    p.add_argument("--inductor-tuning", action="store_true",
                   help="inductor settings of diffusers' speed-up guide (longer compilation)")
    p.add_argument("--no-anchor", action="store_true",
                   help="skip the img2img anchor (its scalar timestep is one more compilation)")
    p.add_argument("--torch-threads", type=int, default=1, help="CPU threads; 0: torch's default [default=%(default)r]")
    p.add_argument("--flops", action="store_true", help="print the arithmetic per image (SD-1.5 on the meta device) "
                   "and what each images/s asks of the GPU, then exit")
    p.add_argument("--n-steps", type=int, default=13,
                   help="N for --flops (sd15-random at 10 dB chose 13) [default=%(default)r]")
    args = p.parse_args(argv)
    args.compile = args.compile or args.compile_mode is not None or args.compile_vae
    if args.flops:
        args.size = args.size or 512
        return count_flops(args)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    args.device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    args.model = args.model or ("sd15-random" if cuda else "tiny")
    args.size = args.size or (512 if cuda else 64)
    args.batch = args.batch or ([1, 2, 4, 8] if cuda else [1, 2])
    args.dtype = args.dtype or (["fp16", "bf16"] if cuda else ["fp32"])
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    src = Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data" / "astronaut.png"
    image = np.asarray(Image.open(src).convert("RGB").resize((args.size, args.size)))
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"# {args.model} on {where}, {args.size}x{args.size}, k={args.k} m={args.m} SNR {args.snr:g} dB, guidance "
          f"{args.guidance:g}, attention {args.attention}, channels_last {args.channels_last}, compile "
          f"{(args.compile_mode or 'default') if args.compile else 'off'}{' +VAE' if args.compile_vae else ''}"
          f"{', fused QKV' if args.fuse_qkv else ''}{', inductor tuning' if args.inductor_tuning else ''}, "
          f"torch {torch.__version__}, "
          f"median of {args.repeat}, warm-up excluded")
    print(f"{'dtype':>5} {'B':>3} {'TX+RX im/s':>10} {'latency s':>10} {'peak MiB':>10} {'outside':>10} "
          f"{'TFLOP/s':>14} {'UNet':>6} {'img2img im/s':>12} {'ratio':>8}")
    rows: list = []
    for dtype in args.dtype:
        bench_dtype(args, dtype, image, rows)
    best = max(rows, key=lambda r: r["ips"])
    print(f"best: {best['ips']:.2f} TX+RX images/s ({best['dtype']}, B={best['B']}, {best['tflops']:.3g} TFLOP/s "
          f"sustained); img2img with the same UNet calls {best['a_ips']:.2f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
