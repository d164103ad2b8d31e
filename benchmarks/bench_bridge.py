"""Cost of the ZMQ bridge: one decode in-process vs through ``gdmcom serve`` on loopback.

A 512 x 768 image gives a 4 x 64 x 96 latent = 12288 symbols.  The codec runs
with a fixed N (``--steps``) so every decode does the same work; the server
runs in this process on ``tcp://127.0.0.1:0`` with its default settings (a
lone client never waits for a batch to fill).

Printed per image format on the wire (``raw`` uint8 RGB, ``png``):

* in-process: median wall time of ``LocalBackend.decode`` (ms), called from a
  thread as a GNU Radio block would;
* via server: median wall time of ``RemoteBackend.decode`` (ms);
* difference of the two medians (ms; noisy: model time varies by more than the overhead);
* overhead: per request, client wall time minus the server's codec time
  (``record["server"]["codec_ms"]``): serialisation, validation, queueing,
  transport, image encoding and decoding (ms; median and 90th percentile).

Usage::

    python benchmarks/bench_bridge.py                 # tiny model, CPU, k=1 m=0 N=1, 5 repeats
    python benchmarks/bench_bridge.py --device cuda --k 5 --m 5 --steps 15 --repeat 20
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gr_gdmcom.bridge import InferenceServer, LocalBackend, RemoteBackend
from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.config import CodecConfig


def _ms(values):
    return statistics.median(values) * 1e3


def _p90(values):
    return float(np.percentile(values, 90)) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=1, help="transmitter inversion steps [default=%(default)r]")
    p.add_argument("--m", type=int, default=0, help="receiver inversion steps [default=%(default)r]")
    p.add_argument("--steps", type=int, default=1, help="fixed denoising steps N [default=%(default)r]")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--repeat", type=int, default=5, help="timed decodes per variant [default=%(default)r]")
    p.add_argument("--torch-threads", type=int, default=1, help="0: torch's default [default=%(default)r]")
    p.add_argument("--png-level", type=int, default=1)
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="server batching wait (spent only with several clients) [default=%(default)r]")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    cfg = CodecConfig(model=args.model, device=args.device, k=args.k, m=args.m, steps=args.steps)
    codec = GenerativeCodec(cfg)
    src = Image.open(_image_path()).convert("RGB").resize((args.width, args.height))
    local = LocalBackend(cfg, codec=codec)
    enc = local.encode(np.asarray(src), "bench")
    n = enc.symbols.size
    print(f"# {args.model} on {codec.c.device}, image {args.width}x{args.height}, latent {enc.meta.latent_shape} "
          f"= {n} symbols, k={args.k} m={args.m} N={args.steps}, {args.repeat} repeats, "
          f"torch threads {torch.get_num_threads()}")

    # GNU Radio blocks call their backend from their own threads; the server's model runs in
    # its worker thread.  The in-process variant runs in a thread too, for a like-for-like comparison.
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def once(backend, fmt=None):
        if fmt:
            backend.image_format = fmt
        t0 = time.perf_counter()
        dec = pool.submit(backend.decode, enc.symbols, enc.meta, 10.0).result()
        wall = time.perf_counter() - t0
        return wall, dec.record.get("server", {}).get("codec_ms", float("nan")) / 1e3, dec

    with InferenceServer(codec, "tcp://127.0.0.1:0", max_wait_ms=args.max_wait_ms, png_level=args.png_level) as srv, \
            RemoteBackend(srv.last_endpoint, cfg, timeout_ms=600_000, retries=0) as remote:
        # one client (one peer: the server does not wait for a batch to fill), two wire formats
        variants = {"in-process": (local, None), "raw": (remote, "raw"), "png": (remote, "png")}
        ref = {name: once(*b)[2] for name, b in variants.items()}  # warm-up
        for name in ("raw", "png"):
            assert np.array_equal(ref[name].image, ref["in-process"].image), "remote and in-process images differ"
        walls = {name: [] for name in variants}
        codec_s = {name: [] for name in variants}
        for _ in range(args.repeat):  # interleaved, so that drifts of the model's speed hit all alike
            for name, b in variants.items():
                w, c, _ = once(*b)
                walls[name].append(w)
                codec_s[name].append(c)
        rtt = []
        for _ in range(200):
            t0 = time.perf_counter()
            remote.status()
            rtt.append(time.perf_counter() - t0)
    local_walls = walls["in-process"]
    rows = []
    for fmt in ("raw", "png"):
        over = [w - c for w, c in zip(walls[fmt], codec_s[fmt])]
        rows.append(dict(format=fmt, symbols=n, in_process_ms=_ms(local_walls), via_server_ms=_ms(walls[fmt]),
                         difference_ms=_ms(walls[fmt]) - _ms(local_walls), overhead_ms=_ms(over),
                         overhead_p90_ms=_p90(over)))
    print(f"{'format':>6} {'in-process ms':>14} {'via server ms':>14} {'diff ms':>8} {'overhead ms':>12} "
          f"{'p90 ms':>7}")
    for r in rows:
        print(f"{r['format']:>6} {r['in_process_ms']:14.1f} {r['via_server_ms']:14.1f} {r['difference_ms']:8.1f} "
              f"{r['overhead_ms']:12.2f} {r['overhead_p90_ms']:7.2f}")
    print(f"status round trip (no payload): median {_ms(rtt):.3f} ms")
    print(json.dumps(dict(rows=rows, status_rtt_ms=_ms(rtt))))
    return 0


def _image_path() -> Path:
    return Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data" / "astronaut.png"


if __name__ == "__main__":
    raise SystemExit(main())
