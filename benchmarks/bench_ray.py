"""Ray Serve engine: throughput of 2 replicas vs 1, and the Ray path's overhead vs the plain server.

Starts one local Ray instance (``num_cpus`` = this machine's cores) and runs, with
the tiny random-weight model on the CPU and one torch thread per replica:

1. **Scaling.** The codec deployment with 1 replica, then with 2 (``max_batch`` 1,
   so a replica computes one image at a time and nothing but replicas can add
   throughput), behind a :class:`RayGateway`; ``--clients`` threads decode
   ``--images`` images of ``--size`` x ``--size`` pixels (compute-bound: the
   UNet at that latent size dominates) as fast as replies come.  Printed:
   images/s for each and their ratio.
2. **Overhead of the Ray path.** One client, one small decode at a time
   (``--overhead-size``), ``--repeat`` times, through the plain
   :class:`InferenceServer` (model in process) and through gateway -> 1 replica.
   Per request: client wall time minus the codec time reported in
   ``record["server"]["codec_ms"]``; printed: medians of both and their
   difference (what Ray adds: handle call, pickling, the replica's event loop).

Both figures depend on the machine being otherwise idle: on a shared machine
other processes take cores away from the replicas.

Usage::

    python benchmarks/bench_ray.py                        # 256 x 256, 24 images, 4 clients, 30 repeats
    python benchmarks/bench_ray.py --size 384 --images 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import numpy as np
import ray
import torch

from gr_gdmcom.bridge import InferenceServer, RemoteBackend
from gr_gdmcom.bridge.ray_engine import RayGateway, RayOptions, deploy
from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.config import CodecConfig


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _throughput(endpoint: str, cfg: CodecConfig, enc, n_images: int, n_clients: int):
    """Images/s for ``n_images`` decodes spread over ``n_clients`` threads (after one warm-up each),
    and per replica: images served and median codec time (ms)."""
    clients = [RemoteBackend(endpoint, cfg, timeout_ms=600000) for _ in range(n_clients)]
    rng = np.random.default_rng(1)
    noisy = [(enc.symbols + 0.1 * (rng.standard_normal(enc.symbols.size) + 1j * rng.standard_normal(
        enc.symbols.size))).astype(np.complex64) for _ in range(n_images)]
    todo = list(range(n_images))
    lock = threading.Lock()
    served = {}

    def run(c):
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            info = c.decode(noisy[i], enc.meta, 5.0).record["server"]
            with lock:
                served.setdefault(info["replica"], []).append(info["codec_ms"])

    warm = [threading.Thread(target=c.decode, args=(noisy[0], enc.meta, 5.0)) for c in clients]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    for c in clients:
        c.close()
    return n_images / dt, {r: (len(v), round(statistics.median(v), 1)) for r, v in served.items()}


def _overheads(endpoint: str, cfg: CodecConfig, enc, repeat: int) -> list:
    """Per decode: client wall time minus the server's codec time (ms)."""
    out = []
    with RemoteBackend(endpoint, cfg, timeout_ms=600000) as c:
        c.decode(enc.symbols, enc.meta, 5.0)  # warm-up (and the client's one-time settings check)
        for _ in range(repeat):
            t0 = time.perf_counter()
            d = c.decode(enc.symbols, enc.meta, 5.0)
            out.append((time.perf_counter() - t0) * 1e3 - d.record["server"]["codec_ms"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="image side for the scaling run, px [default=%(default)r]")
    p.add_argument("--steps", type=int, default=4, help="fixed denoising steps N [default=%(default)r]")
    p.add_argument("--images", type=int, default=24, help="decodes per scaling run [default=%(default)r]")
    p.add_argument("--clients", type=int, default=4, help="client threads in the scaling run [default=%(default)r]")
    p.add_argument("--overhead-size", type=int, default=64,
                   help="image side for the overhead run [default=%(default)r]")
    p.add_argument("--repeat", type=int, default=30, help="decodes per overhead run [default=%(default)r]")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = CodecConfig(model="tiny", device="cpu", k=1, m=1, steps=args.steps)
    local = GenerativeCodec(cfg)
    big, small = local.encode(_image(args.size), "big"), local.encode(_image(args.overhead_size, 1), "small")
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; tiny model, CPU, "
          f"k=1 m=1 N={args.steps}, one torch thread per replica", flush=True)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = {}
    try:
        # 1. scaling: 1 replica, then the same application redeployed with 2
        for n in (1, 2):
            ro = RayOptions(replicas=n, cpus_per_replica=1, torch_threads=1)
            handle, info, _ = deploy(cfg, ro, max_batch=1, max_wait_ms=0)
            with RayGateway(handle, info, ray_options=ro, max_batch=1, max_wait_ms=0) as gw:
                rows[f"images_per_s_{n}_replica"], per_replica = _throughput(gw.last_endpoint, cfg, big,
                                                                             args.images, args.clients)
                if n == 1:  # 2. the Ray path's overhead: gateway -> one replica
                    rows["ray_overhead_ms"] = statistics.median(_overheads(gw.last_endpoint, cfg, small,
                                                                           args.repeat))
            print(f"{n} replica(s): {rows[f'images_per_s_{n}_replica']:.2f} images/s "
                  f"({args.size}x{args.size}, {args.images} images, {args.clients} clients); per replica "
                  f"(images, median codec ms): {per_replica}; load average {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        ray.shutdown()
    with InferenceServer(local, "tcp://127.0.0.1:0", max_wait_ms=0) as srv:
        rows["plain_overhead_ms"] = statistics.median(_overheads(srv.last_endpoint, cfg, small, args.repeat))
    rows["speedup_2_vs_1"] = rows["images_per_s_2_replica"] / rows["images_per_s_1_replica"]
    rows["ray_minus_plain_ms"] = rows["ray_overhead_ms"] - rows["plain_overhead_ms"]
    print(f"2 vs 1 replica: {rows['speedup_2_vs_1']:.2f}x")
    print(f"overhead per decode ({args.overhead_size}x{args.overhead_size}, median of {args.repeat}): "
          f"plain server {rows['plain_overhead_ms']:.2f} ms, Ray gateway + replica {rows['ray_overhead_ms']:.2f} ms, "
          f"Ray adds {rows['ray_minus_plain_ms']:.2f} ms")
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")
    print(json.dumps({k: round(v, 3) for k, v in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
