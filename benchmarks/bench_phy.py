"""Receiver throughput of :class:`gr_gdmcom.phy.FrameRx` against GNU Radio's
``channels.channel_model`` on the same number of samples, measured in the same run.

    .venv/bin/python benchmarks/bench_phy.py [--bursts 50] [--symbols 4096] [--sps 2] [--snr 10]
        [--off dispersive_eq track_timing notch]

The stream is ``--bursts`` back-to-back bursts of ``--symbols`` latent symbols
at ``--snr`` dB (numpy AWGN).  The receiver is timed from the first ``push``
to the last frame of ``flush`` (detection through payload extraction), once
with the whole stream in one ``push`` and once in ``--chunk``-sample pushes
(what a GNU Radio block sees).  ``channel_model`` runs
``vector_source_c -> channel_model -> null_sink`` with noise, CFO and 3 taps, and
``channel_model -> frame_rx`` the same into the receiver's GNU Radio block (a receiving
flowgraph: its CPU rate is what a radio host spends).  The receiver runs numpy's BLAS on one
thread unless ``OPENBLAS_NUM_THREADS`` is set (``phy.rx.single_blas_thread``):
``OPENBLAS_NUM_THREADS=2 ... --cores 0`` shows what OpenBLAS's spinning worker cost.
By default the process is pinned to one CPU core (``--cores 0`` to leave it
free) and each figure is the best of ``--repeat`` runs, the receiver and
``channel_model`` runs interleaved so that both see the same machine load;
wall-clock and CPU-time (``time.process_time``, all threads) rates are printed.  ``--off``
turns receiver stages off (their ``FrameConfig`` switches) to show what each costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, awgn, noise_voltage


#: the receiver's switchable stages (FrameConfig fields), for --off
OFF = ("dispersive_eq", "track_timing", "notch")


def timed(fn):
    """(wall seconds, CPU seconds of the process) of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def run_rx(cfg: FrameConfig, x: np.ndarray, chunk: int, expect: int):
    rx = FrameRx(cfg)
    frames = []
    for k in range(0, len(x), chunk):
        frames += rx.push(x[k: k + chunk])
    frames += rx.flush()
    if len(frames) != expect:
        raise RuntimeError(f"receiver returned {len(frames)} frames, expected {expect}: {rx.counters}")


def run_channel_model(x: np.ndarray, snr_db: float, cfg: FrameConfig = None, expect: int = 0):
    """``vector_source_c -> channel_model -> null_sink``; with ``cfg``, into the ``frame_rx`` block
    instead (a receiving flowgraph: its CPU time is what a radio host spends)."""
    from gnuradio import blocks, channels, gr

    tb = gr.top_block()
    ch = channels.channel_model(noise_voltage(snr_db), 0.001, 1.0, [1.0, 0.3j, -0.1], 1)
    src = blocks.vector_source_c(np.concatenate([x, np.zeros(64, np.complex64)]), False)  # (the taps' delay)
    if cfg is None:
        tb.connect(src, ch, blocks.null_sink(gr.sizeof_gr_complex))
        tb.run()
        return
    from gr_gdmcom.blocks.frame_rx import frame_rx

    rx = frame_rx(reassemble=False, **dataclasses.asdict(cfg))
    tb.connect(src, ch, rx)
    tb.msg_connect(rx, "pdus", blocks.message_debug(), "store")
    tb.run()
    if rx.counters()["frames_out"] != expect:  # (the last frame's PDU, sent in stop(), may not reach a sink)
        raise RuntimeError(f"frame_rx returned {rx.counters()['frames_out']} frames, expected {expect}: "
                           f"{rx.counters()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=50, help="bursts in the stream [default=%(default)r]")
    ap.add_argument("--symbols", type=int, default=4096, help="latent symbols per burst [default=%(default)r]")
    ap.add_argument("--sps", type=int, default=2, help="samples per symbol [default=%(default)r]")
    ap.add_argument("--snr", type=float, default=10.0, help="Es/N0 in dB [default=%(default)r]")
    ap.add_argument("--chunk", type=int, default=8192, help="samples per push, streaming run [default=%(default)r]")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (best kept) [default=%(default)r]")
    ap.add_argument("--seed", type=int, default=0, help="random seed [default=%(default)r]")
    ap.add_argument("--off", nargs="*", default=[], choices=OFF,
                    help="receiver stages to turn off, to see what each costs (FrameConfig switches)")
    ap.add_argument("--cores", type=int, default=1, help="pin to this many CPU cores, 0 = no pinning "
                    "[default=%(default)r]")
    args = ap.parse_args()
    if args.cores > 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])

    rng = np.random.default_rng(args.seed)
    cfg = FrameConfig(sps=args.sps, max_chunk_symbols=args.symbols, gap_symbols=0, **{k: False for k in args.off})
    sym = ((rng.standard_normal(args.bursts * args.symbols) + 1j * rng.standard_normal(args.bursts * args.symbols))
           / np.sqrt(2)).astype(np.complex64)
    x = awgn(FrameTx(cfg).stream(sym, Header(image_id=1)), args.snr, rng)
    n = len(x)
    print(f"stream: {args.bursts} bursts x {args.symbols} symbols, sps={args.sps}, {args.snr:g} dB: {n} samples; "
          f"cores: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}"
          + (f"; off: {', '.join(args.off)}" if args.off else ""))
    runs = {"FrameRx, one push": lambda: run_rx(cfg, x, n, args.bursts),
            f"FrameRx, {args.chunk}-sample pushes": lambda: run_rx(cfg, x, args.chunk, args.bursts)}
    try:
        import gnuradio  # noqa: F401
        runs["channel_model"] = lambda: run_channel_model(x, args.snr)
        runs["channel_model -> frame_rx"] = lambda: run_channel_model(x, args.snr, cfg, args.bursts)
    except ImportError as exc:
        print(f"GNU Radio not importable ({exc}); receiver only")
    best = {k: [float("inf")] * 2 for k in runs}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            best[name] = [min(a, b) for a, b in zip(best[name], timed(fn))]
    for name, (wall, cpu) in best.items():
        print(f"{name:34s} wall {n / wall / 1e6:6.2f} Msps   cpu {n / cpu / 1e6:6.2f} Msps")
    if "channel_model" in best:
        cm = best["channel_model"]
        for name in list(best)[:2]:
            print(f"ratio {name} / channel_model:  wall {cm[0] / best[name][0]:.2f}   cpu {cm[1] / best[name][1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
