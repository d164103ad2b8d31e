"""Seconds per codec stage on the tiny model, and the share of time spent outside model calls.

    .venv/bin/python benchmarks/bench_codec.py [--sizes 64 256] [--repeats 3] [--snr 10]

Stages: VAE encode, inversion (k + m UNet calls), sampling (N calls), VAE
decode, everything else.  "Model time" is measured inside the UNet/VAE/text
encoder forward calls (hooks); the rest of the wall time is the codec's own
overhead (image I/O, DDIM arithmetic, normalisation, step choice), which must
stay under 10 %.  Run on an idle machine: other processes inflate everything.
"""

import argparse
import time

import numpy as np
import torch

from gr_gdmcom.codec import GenerativeCodec, load_components
from gr_gdmcom.config import CodecConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    comp = load_components("tiny", device="cpu")
    model_time = [0.0]

    def pre(_m, _a):
        _m._t0 = time.perf_counter()

    def post(_m, _a, _o):
        model_time[0] += time.perf_counter() - _m._t0

    for m in (comp.unet, comp.vae.encoder, comp.vae.decoder, comp.vae.quant_conv, comp.vae.post_quant_conv,
              comp.text_encoder):
        if m is not None:
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
    codec = GenerativeCodec(CodecConfig(model="tiny", device="cpu"), components=comp)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':>5} {'vae_enc':>8} {'invert':>8} {'sample':>8} {'vae_dec':>8} {'other':>8} {'total':>8}"
          f" {'model':>8} {'outside':>8} {'N':>3} {'calls':>5}")
    for size in args.sizes:
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        codec.decode(*(lambda e: (e.symbols, e.meta))(codec.encode(img)), args.snr)  # warm-up
        rows = []
        for _ in range(args.repeats):
            model_time[0] = 0.0
            t0 = time.perf_counter()
            enc = codec.encode(img)
            noise = (rng.normal(size=enc.symbols.size) + 1j * rng.normal(size=enc.symbols.size)) / np.sqrt(2)
            y = (enc.symbols + noise * 10 ** (-args.snr / 20)).astype(np.complex64)
            dec = codec.decode(y, enc.meta, args.snr)
            total = time.perf_counter() - t0
            se, sd = enc.record["seconds"], dec.record["seconds"]
            stages = dict(vae_encode=se["vae_encode"], inversion=se["inversion"] + sd["inversion"],
                          sampling=sd["sampling"], vae_decode=sd["vae_decode"])
            stages["other"] = total - sum(stages.values())
            rows.append((stages, total, model_time[0], dec.record))
        med = lambda xs: float(np.median(xs))  # noqa: E731
        st = {k: med([r[0][k] for r in rows]) for k in rows[0][0]}
        total = med([r[1] for r in rows])
        model = med([r[2] for r in rows])
        rec = rows[0][3]
        print(f"{size:>5} {st['vae_encode']:8.4f} {st['inversion']:8.4f} {st['sampling']:8.4f} {st['vae_decode']:8.4f}"
              f" {st['other']:8.4f} {total:8.4f} {model:8.4f} {100 * (1 - model / total):7.1f}%"
              f" {rec['n_steps']:>3} {codec.config.k + rec['unet_calls']:>5}")


if __name__ == "__main__":
    main()
