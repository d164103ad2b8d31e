"""Payload Es/N0 with a sampling-clock offset, with and without the receiver's drift
tracking, through GNU Radio's ``channels.channel_model`` (epsilon = 1 + ppm 1e-6).

    .venv/bin/python benchmarks/bench_sro.py [--ppm 0 10 25 50 100] [--snr 10 25] [--sps 2]
        [--taps 1] [--bursts 4] [--burst-symbols 8192]

Each point sends ``--bursts`` bursts of ``--burst-symbols`` (``max_chunk_symbols``, 8192) latent symbols
with CFO 0.001 cycles/sample and prints, per (ppm, SNR), the payload Es/N0 measured
against the sent symbols (mean over the bursts, dB) without tracking (and without the
receiver's dispersive pass, which follows a drift too) and with it, the
receiver's own estimate, how many bursts were re-timed and the drift it reported.
The table in docs/frame-format.md section 6 comes from the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np

from gr_gdmcom.phy import FrameConfig, FrameRx, FrameTx, Header, chunk_symbols, measure_snr_db, noise_voltage
from gr_gdmcom.phy.channel import complex_noise, normalise_taps


def channel(x: np.ndarray, snr_db: float, ppm: float, taps, seed: int = 3) -> np.ndarray:
    from gnuradio import blocks, channels, gr

    tb = gr.top_block()
    ch = channels.channel_model(noise_voltage=noise_voltage(snr_db), frequency_offset=0.001, epsilon=1.0 + ppm * 1e-6,
                                taps=[complex(t) for t in normalise_taps(taps)], noise_seed=seed, block_tags=False)
    snk = blocks.vector_sink_c()
    tb.connect(blocks.vector_source_c(x, False), ch, snk)
    tb.run()
    return np.asarray(snk.data(), np.complex64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ppm", type=float, nargs="+", default=[0, 10, 25, 50, 100])
    ap.add_argument("--snr", type=float, nargs="+", default=[25.0, 10.0])
    ap.add_argument("--sps", type=int, default=2)
    ap.add_argument("--taps", type=complex, nargs="+", default=[1.0])
    ap.add_argument("--bursts", type=int, default=4)
    ap.add_argument("--burst-symbols", type=int, default=FrameConfig.max_chunk_symbols,
                    help="latent symbols per burst (FrameConfig.max_chunk_symbols)")
    args = ap.parse_args()

    cfg = FrameConfig(sps=args.sps, max_chunk_symbols=args.burst_symbols)
    rng = np.random.default_rng(1)
    sym = complex_noise(args.bursts * cfg.max_chunk_symbols, 1.0, rng)
    x = FrameTx(cfg).stream(sym, Header(image_id=3))
    x = np.concatenate([np.zeros(500, np.complex64), x, np.zeros(2000, np.complex64)]).astype(np.complex64)
    chunks = chunk_symbols(sym, cfg.max_chunk_symbols)
    print(f"sps {cfg.sps}, taps {args.taps}, {args.bursts} bursts x {cfg.max_chunk_symbols} symbols, CFO 0.001")
    print(f"{'ppm':>6} {'SNR':>5} | {'untracked':>9} {'tracked':>8} {'estimate':>8} {'re-timed':>8} {'reported ppm':>14}")
    for snr in args.snr:
        for ppm in args.ppm:
            y = channel(x, snr, ppm, args.taps)
            res = {}
            for track in (False, True):
                # the comparison: neither drift tracking nor the dispersive pass (which follows a drift too)
                rx = FrameRx(cfg if track else dataclasses.replace(cfg, dispersive_eq=False), track_timing=track)
                # untracked, a drifting burst is garbage after its first symbols (-19 dB at 200 ppm)
                # and the receiver erases some: its warnings are not the tracked receiver's
                logging.getLogger("gr_gdmcom.phy.rx").setLevel(logging.INFO if track else logging.ERROR)
                frames = rx.push(y) + rx.flush()
                got = [measure_snr_db(chunks[f.header.chunk_index], f.symbols) for f in frames]
                res[track] = (frames, got, rx.counters)
            frames, got, counters = res[True]
            lost = args.bursts - len(frames)
            ppms = [f"{f.sro_ppm:.0f}" for f in frames if f.sro_ppm]
            print(f"{ppm:6g} {snr:5g} | {np.mean(res[False][1]):9.2f} {np.mean(got):8.2f} "
                  f"{np.mean([f.snr_db for f in frames]):8.2f} {counters['timing_tracked']:4d}/{len(frames)}"
                  f"{f' ({lost} lost)' if lost else ''} {','.join(ppms) or '-':>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
