"""Step-level vs batch-at-a-time scheduling of ``gdmcom serve`` under a Poisson load of mixed SNRs.

Every request is a decode of one encoded image at an SNR drawn uniformly from
``--snr-min``..``--snr-max`` dB (AWGN added to its symbols), so the receiver's
N differs from request to request.  ``--mix link`` makes every other request
an encode of a differently cropped picture instead (what a server shared by
transmitters and receivers sees).  Both servers run in this process on
loopback with the same codec, ``--max-batch`` and the same requests.

1. **Capacity** of each scheduling: all ``--requests`` sent at once (a
   saturated queue); images/s = requests / time to the last reply; the
   median of ``--rounds`` runs, batch and step interleaved.  CPU ms/image is
   this process's CPU time (server and client threads) per image: less
   sensitive than wall time to other work on a shared machine.
2. **Poisson load** at ``--load`` x the batch-at-a-time capacity (the server
   as it ran before step-level scheduling): the same arrival times, SNRs and
   noise for both, ``--rounds`` runs each, interleaved and pooled;
   images/s = requests / (last reply - first arrival); p50 and
   p95 latency from each request's arrival to its reply; batched UNet calls per
   image (the server's ``model_calls`` / served).
3. **Same outputs**: the largest grey-level difference between the two
   schedulings' images of the same request (float rounding of differently
   composed batches only).

The last line is ``step-level/batch throughput ratio: X``: the capacities'
ratio (at a load both can carry, both deliver the arrival rate; what differs
there is the latency, printed above it).

Usage::

    python benchmarks/bench_serving.py                      # tiny model, CPU, 64 x 64, 48 requests
    python benchmarks/bench_serving.py --device cuda --model sd15-random --size 512 --max-batch 8
    python benchmarks/bench_serving.py --engine ray         # the same through Ray Serve replicas
    python benchmarks/bench_serving.py --mix link           # half the requests encodes
"""

from __future__ import annotations

import argparse
import atexit
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gr_gdmcom.bridge import InferenceServer, RemoteBackend
from gr_gdmcom.codec import GenerativeCodec
from gr_gdmcom.codec.accel import apply_speed_options
from gr_gdmcom.config import CodecConfig


def local_servers(codec):
    """Server factory of the local engine: ``make(scheduling, max_batch, max_queue)`` -> a started
    :class:`InferenceServer` with the model in this process."""
    def make(scheduling, max_batch, max_queue):
        return InferenceServer(codec, "tcp://127.0.0.1:0", max_batch=max_batch, max_queue=max_queue,
                               max_wait_ms=10.0, scheduling=scheduling).start()
    return make


def ray_servers(config, max_batch, torch_threads):
    """Server factory of ``--engine ray``: one single-replica Ray Serve application per scheduling
    (deployed once), a new gateway per run; returns (make, cleanup)."""
    from gr_gdmcom.bridge.ray_engine import RayGateway, RayOptions, deploy, shutdown

    ro = RayOptions(replicas=1, cpus_per_replica=0, torch_threads=torch_threads)
    apps, started = {}, False
    for s in ("batch", "step"):
        handle, info, st = deploy(config, ro, max_batch=max_batch, max_wait_ms=10.0, app_name=f"bench-{s}",
                                  scheduling=s)
        apps[s], started = (handle, info), started or st

    def make(scheduling, max_batch, max_queue):
        return RayGateway(*apps[scheduling], "tcp://127.0.0.1:0", max_batch=max_batch, max_queue=max_queue,
                          max_wait_ms=10.0, scheduling=scheduling, ray_options=ro).start()
    return make, lambda: shutdown(started_ray=started)


def run_load(make_server, config, scheduling, items, arrivals, max_batch, clients=64):
    """Serve ``items`` (symbols, meta, snr) arriving at ``arrivals`` (s from start; 0 = all at once)
    through ``make_server(scheduling, max_batch, max_queue)`` to clients configured as ``config``
    -> dict(images, seconds, latencies, calls, outputs)."""
    srv = make_server(scheduling, max_batch, 4 * len(items))
    local = threading.local()
    made, made_lock = [], threading.Lock()
    out, lat, done_at = [None] * len(items), [0.0] * len(items), [0.0] * len(items)

    def backend():
        if not hasattr(local, "b"):
            local.b = RemoteBackend(srv.last_endpoint, config, timeout_ms=600_000, retries=0)
            with made_lock:
                made.append(local.b)
        return local.b

    def one(i, t_arrive):
        op, args = items[i]
        out[i] = getattr(backend(), op)(*args)
        done_at[i] = time.monotonic()
        lat[i] = done_at[i] - t_arrive

    try:
        with ThreadPoolExecutor(clients) as pool:
            for _ in pool.map(lambda _: backend(), range(clients)):  # connect before the clock starts
                pass
            t0, cpu0 = time.monotonic(), time.process_time()
            futures = []
            for i, t in enumerate(arrivals):
                delay = t0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(one, i, t0 + t))
            for f in futures:
                f.result()
            cpu = time.process_time() - cpu0
        st = made[0].status()
    finally:
        for b in made:
            b.close()
        srv.stop(timeout=30)
    return dict(images=len(items), seconds=max(done_at) - t0, cpu=cpu, latencies=lat, calls=st["model_calls"],
                served=st["served"], outputs=out)


def _row(name, r):
    lat = np.array(r["latencies"]) * 1e3
    return (f"{name:<8} {r['images'] / r['seconds']:8.2f} {np.percentile(lat, 50):9.0f} {np.percentile(lat, 95):9.0f} "
            f"{(r['calls'] / r['served']) if r['calls'] else float('nan'):16.2f} {r['cpu'] / r['images'] * 1e3:14.1f}")


def _median_run(runs):
    """The run of median images/s."""
    return sorted(runs, key=lambda r: r["images"] / r["seconds"])[len(runs) // 2]


def _pooled(runs):
    """Runs of the same load as one: images/s over all, every latency, UNet calls and CPU summed."""
    out = dict(runs[0])
    for key in ("images", "seconds", "cpu", "calls", "served"):
        out[key] = sum(r[key] for r in runs)
    out["latencies"] = [x for r in runs for x in r["latencies"]]
    out["outputs"] = runs[0]["outputs"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=64, help="image side, pixels [default=%(default)r]")
    p.add_argument("--requests", type=int, default=48, help="requests per run [default=%(default)r]")
    p.add_argument("--max-batch", type=int, default=4, help="server --max-batch [default=%(default)r]")
    p.add_argument("--load", type=float, default=0.8,
                   help="Poisson arrival rate as a fraction of the batch-at-a-time capacity [default=%(default)r]")
    p.add_argument("--mix", choices=("decode", "link"), default="decode",
                   help="decode: every request a decode (the receivers of many links); link: each image's encode "
                        "and its decode as two requests, in random order (a server shared by transmitters and "
                        "receivers: half the requests run a VAE encode and k inversion steps) [default=%(default)r]")
    p.add_argument("--snr-min", type=float, default=0.0)
    p.add_argument("--snr-max", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3,
                   help="capacity runs per scheduling, interleaved; the median is shown [default=%(default)r]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1, help="0: torch's default [default=%(default)r]")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile-mode", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile the UNet in this mode (reduce-overhead: CUDA graphs); the warm-up "
                        "compiles every batch size 1..--max-batch before the timed runs [default: eager]")
    p.add_argument("--compile-vae", action="store_true", help="with --compile-mode: the VAE too")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: the model in this process; ray: one single-replica Ray Serve application per "
                        "scheduling behind a gateway (gdmcom serve --engine ray) [default=%(default)r]")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    codec = GenerativeCodec(CodecConfig(model=args.model, device=args.device))
    apply_speed_options(codec.c, channels_last=args.channels_last, compile=args.compile_mode is not None,
                        compile_mode=args.compile_mode, compile_vae=args.compile_vae and args.compile_mode is not None)
    if args.engine == "ray":  # the replicas build their own model (same config); this one encodes
        make, cleanup = ray_servers(codec.config, args.max_batch, args.torch_threads)
        atexit.register(cleanup)
    else:
        make = local_servers(codec)
    img = Image.open(Path(__file__).resolve().parent.parent / "gr_gdmcom" / "data" / "astronaut.png")
    enc = codec.encode(np.asarray(img.convert("RGB").resize((args.size, args.size))), name="bench")
    rng = np.random.default_rng(args.seed)
    snrs = rng.uniform(args.snr_min, args.snr_max, args.requests)
    n = enc.symbols.size
    items = []
    for s in snrs:
        noise = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * np.sqrt(10 ** (-s / 10) / 2)
        items.append(("decode", ((enc.symbols + noise).astype(np.complex64), enc.meta, float(s))))
    if args.mix == "link":  # every other request an encode of a differently cropped/flipped picture
        pic = np.asarray(img.convert("RGB").resize((args.size + 16, args.size + 16)))
        for i in range(0, len(items), 2):
            dy, dx = rng.integers(0, 17, 2)
            crop = pic[dy:dy + args.size, dx:dx + args.size][:, ::(1 if i % 4 else -1)].copy()
            items[i] = ("encode", (crop, f"img{i}"))
    ns = [codec.step_choice(s, enc.meta).n_steps for (op, _), s in zip(items, snrs) if op == "decode"]
    cfg = codec.config
    print(f"# {args.model} on {codec.c.device}, {args.size}x{args.size} (latent {enc.meta.latent_shape}), "
          f"k={cfg.k} m={cfg.m} T={cfg.T} guidance {cfg.guidance}, SNR U({args.snr_min:g}, {args.snr_max:g}) dB "
          f"-> N {min(ns)}..{max(ns)} (mean {statistics.mean(ns):.1f}), {args.requests} requests "
          f"({sum(op == 'encode' for op, _ in items)} encodes, the rest decodes), "
          f"max_batch {args.max_batch}, engine {args.engine}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other work on the machine slows both alike)")

    t_warm = time.monotonic()
    if args.compile_mode:  # every batch size a server call can have (CFG doubles it in the UNet)
        for b in range(1, args.max_batch + 1):
            codec.decode_many([a for op, a in items if op == "decode"][:b])
    run_load(make, codec.config, "step", items[:4], [0.0] * 4, args.max_batch)  # warm-up: not counted
    print(f"# warm-up {time.monotonic() - t_warm:.0f} s (not counted)")
    runs: dict = {"batch": [], "step": []}
    for _ in range(args.rounds):  # interleaved: a change in the machine's other load hits both
        for s in runs:
            runs[s].append(run_load(make, codec.config, s, items, [0.0] * len(items), args.max_batch))
    cap = {s: _median_run(r) for s, r in runs.items()}
    rate = args.load * cap["batch"]["images"] / cap["batch"]["seconds"]
    arrivals = np.cumsum(rng.exponential(1.0 / rate, args.requests)) - 0.0
    arrivals -= arrivals[0]
    lruns: dict = {"batch": [], "step": []}
    for _ in range(args.rounds):
        for s in lruns:
            lruns[s].append(run_load(make, codec.config, s, items, arrivals.tolist(), args.max_batch))
    load = {s: _pooled(r) for s, r in lruns.items()}

    head = (f"{'':<8} {'images/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'UNet calls/image':>16} "
            f"{'CPU ms/image':>14}")
    print(f"\n## capacity: all {args.requests} requests at once (median of {args.rounds} interleaved runs; "
          f"images/s of each: " + ", ".join(f"{s} " + " ".join(f"{r['images'] / r['seconds']:.2f}" for r in rr)
                                          for s, rr in runs.items()) + ")")
    print(head)
    for s in ("batch", "step"):
        print(_row(s, cap[s]))
    print(f"\n## Poisson arrivals at {rate:.2f}/s = {args.load:g} x batch-at-a-time capacity "
          f"({args.rounds} interleaved runs of the same arrivals pooled)")
    print(head)
    for s in ("batch", "step"):
        print(_row(s, load[s]))
    pairs = [(a, b) for r in (cap, load) for a, b in zip(r["batch"]["outputs"], r["step"]["outputs"])]
    diff = max(int(np.abs(a.image.astype(int) - b.image.astype(int)).max()) for a, b in pairs if hasattr(a, "image"))
    sym = max((float(np.abs(a.symbols - b.symbols).max()) for a, b in pairs if hasattr(a, "symbols")), default=None)
    p95 = {s: np.percentile(load[s]["latencies"], 95) for s in load}
    print(f"\nsame outputs: largest grey-level difference step vs batch {diff} (of 255)"
          + (f", largest symbol difference {sym:.2g} (unit energy)" if sym is not None else ""))
    print(f"p95 latency at {args.load:g} x capacity: step {p95['step'] * 1e3:.0f} ms vs batch "
          f"{p95['batch'] * 1e3:.0f} ms ({p95['step'] / p95['batch']:.2f}x)")
    if all(cap[s]["calls"] for s in cap):
        per_image = {s: cap[s]["calls"] / cap[s]["served"] for s in cap}
        print(f"batched UNet calls per image batch/step: {per_image['batch'] / per_image['step']:.2f} (the "
              f"throughput ratio where a batched call costs what a single one does: a GPU below saturation; on a "
              f"CPU a call's cost grows with its batch)")
    else:  # a Ray gateway does not see its replicas' UNet calls; their CPU time is not this process's either
        print("batched UNet calls per image: not reported by Ray replicas (CPU ms/image: the gateway and clients)")
    thr = {s: cap[s]["images"] / cap[s]["seconds"] for s in cap}
    print(f"step-level/batch throughput ratio: {thr['step'] / thr['batch']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
